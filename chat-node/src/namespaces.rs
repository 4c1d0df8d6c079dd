//! Per-namespace channel options: history (size and TTL, or none at all), presence, join/leave,
//! whether clients may publish and whether anonymous clients may subscribe.
//!
//! They come from `--namespaces-file` (JSON, the shape the operator renders from
//! `spec.channels`) on top of the flags: `--history-size` and `--history-ttl` are the base of
//! every namespace's history, and `--presence-namespaces` / `--join-leave-namespaces` are
//! shorthand that turns those options on for the namespaces they name (`*`: the defaults).
//! A flag that turns an option on where the file turns it off is refused at start: two sources
//! disagreeing about who may see whom is a mistake to surface, not to settle silently.
//!
//! Resolved once at start into a [`Namespaces`] table; [`Namespaces::of`] is a hash lookup by
//! the channel's namespace (the part before the first `:`, `default` without one).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::channel::namespace;
use crate::config::Config;

/// Longest namespace name in a namespaces file.
pub const MAX_NAME_LEN: usize = 64;

/// The history of a channel that keeps one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Messages kept (0: none kept, but messages still get offsets and a stream exists).
    pub size: usize,
    /// How long the history lives after its last message.
    pub ttl: Duration,
}

/// What the channels of one namespace do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// `None`: no history at all. Nothing is stored, not even an offset: messages carry no
    /// `offset`, `subscribed` no `offset`/`epoch`, and `since`/`last`/`history` recover nothing.
    pub history: Option<HistoryOptions>,
    pub presence: bool,
    pub join_leave: bool,
    /// Whether clients (WebSocket, `POST /api/publish` on the client port) may publish; the
    /// server API always may.
    pub client_publish: bool,
    /// Whether a client without a user (no token `sub`; every client when auth is off) may
    /// subscribe, read history or presence.
    pub anonymous_subscribe: bool,
    /// Private: subscribing needs a subscription token for the channel (the `token` of a
    /// `subscribe` frame); history and presence need such a subscription; SSE and
    /// `GET /api/history` are refused.
    pub private: bool,
}

impl Options {
    /// Whether a client may subscribe to (and read) this namespace's channels; `authenticated`
    /// when its token names a user (`sub`).
    pub fn may_subscribe(&self, authenticated: bool) -> bool {
        self.anonymous_subscribe || authenticated
    }
}

/// The options of every namespace: the listed ones and the defaults for all others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespaces {
    listed: HashMap<String, Options>,
    defaults: Options,
}

/// A namespaces file or flag combination that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NamespacesError {
    #[error("failed to read the namespaces file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not valid: {source}")]
    Parse {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{origin} is not valid: {message}")]
    Invalid { origin: String, message: String },
    #[error("give --namespaces-file or --namespaces (CHAT_NAMESPACES), not both")]
    Both,
    #[error("{0}")]
    Contradiction(String),
}

/// The file as written: every option optional (inherited).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    defaults: OptionsForm,
    #[serde(default)]
    namespaces: Vec<OptionsForm>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OptionsForm {
    /// Required in `namespaces`, refused in `defaults`.
    name: Option<String>,
    history: Option<HistoryForm>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    client_publish: Option<bool>,
    anonymous_subscribe: Option<bool>,
    private: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryForm {
    enabled: Option<bool>,
    size: Option<usize>,
    /// A duration: `30s`, `5m`, `24h`.
    ttl: Option<String>,
}

/// Whether `name` may name a namespace: 1–64 characters of `A-Z a-z 0-9 _ - . /` (a channel
/// name's characters without `:`, which ends the namespace).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

impl Namespaces {
    /// Every namespace alike, from the flags only (no file).
    pub fn uniform(options: Options) -> Namespaces {
        Namespaces {
            listed: HashMap::new(),
            defaults: options,
        }
    }

    /// The options from `--namespaces-file` (when set) and the flags.
    pub fn from_config(config: &Config) -> Result<Namespaces, NamespacesError> {
        let (text, origin) = match (&config.namespaces_file, &config.namespaces) {
            (Some(_), Some(_)) => return Err(NamespacesError::Both),
            (Some(path), None) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| NamespacesError::Read {
                        path: path.clone(),
                        source,
                    })?;
                (text, format!("the namespaces file {}", path.display()))
            }
            (None, Some(json)) => (json.clone(), "--namespaces (CHAT_NAMESPACES)".to_owned()),
            (None, None) => ("{}".to_owned(), "the flags".to_owned()),
        };
        let form = serde_json::from_str(&text).map_err(|source| NamespacesError::Parse {
            origin: origin.clone(),
            source,
        })?;
        resolve(form, config, &origin)
    }

    /// The options of `channel`'s namespace.
    pub fn of(&self, channel: &str) -> &Options {
        self.listed
            .get(namespace(channel))
            .unwrap_or(&self.defaults)
    }

    /// The defaults (channels of no listed namespace).
    pub fn defaults(&self) -> &Options {
        &self.defaults
    }

    /// The shortest history TTL of any namespace (how often the embedded broker sweeps).
    pub fn min_history_ttl(&self) -> Option<Duration> {
        std::iter::once(&self.defaults)
            .chain(self.listed.values())
            .filter_map(|o| o.history.map(|h| h.ttl))
            .min()
    }
}

/// Applies a shorthand flag (`--presence-namespaces`): turns `option` on for the namespaces it
/// lists, adding the ones the file does not list; `*` turns it on in the defaults.
fn apply_shorthand(
    form: &mut FileForm,
    flag: &str,
    listed: &[String],
    option: fn(&mut OptionsForm) -> &mut Option<bool>,
) -> Result<(), NamespacesError> {
    let contradiction = |what: &str| {
        NamespacesError::Contradiction(format!(
            "{flag} turns it on for {what}, but the namespaces file turns it off there: \
             remove one of the two"
        ))
    };
    for name in listed.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if name == "*" {
            if *option(&mut form.defaults) == Some(false) {
                return Err(contradiction("every namespace (`*`) and the defaults"));
            }
            for n in &mut form.namespaces {
                if *option(n) == Some(false) {
                    let name = n.name.clone().unwrap_or_default();
                    return Err(contradiction(&format!(
                        "every namespace (`*`), `{name}` too"
                    )));
                }
            }
            *option(&mut form.defaults) = Some(true);
            continue;
        }
        let at = form
            .namespaces
            .iter()
            .position(|n| n.name.as_deref() == Some(name));
        let n = match at {
            Some(at) => &mut form.namespaces[at],
            None => {
                form.namespaces.push(OptionsForm {
                    name: Some(name.to_owned()),
                    ..OptionsForm::default()
                });
                form.namespaces.last_mut().expect("pushed")
            }
        };
        if *option(n) == Some(false) {
            return Err(contradiction(&format!("namespace `{name}`")));
        }
        *option(n) = Some(true);
    }
    Ok(())
}

fn resolve(
    mut form: FileForm,
    config: &Config,
    origin: &str,
) -> Result<Namespaces, NamespacesError> {
    let invalid = |message: String| NamespacesError::Invalid {
        origin: origin.to_owned(),
        message,
    };
    if form.defaults.name.is_some() {
        return Err(invalid("`defaults` takes no `name`".to_owned()));
    }
    let mut seen = std::collections::HashSet::new();
    for n in &form.namespaces {
        let Some(name) = n.name.as_deref() else {
            return Err(invalid(
                "every entry of `namespaces` needs a `name`".to_owned(),
            ));
        };
        if !is_valid_name(name) {
            return Err(invalid(format!(
                "namespace name {name:?} must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ - . / \
                 (the part of a channel name before `:`; `default` for names without one)"
            )));
        }
        if !seen.insert(name) {
            return Err(invalid(format!("namespace `{name}` is listed twice")));
        }
    }
    apply_shorthand(
        &mut form,
        "--presence-namespaces",
        &config.presence_namespaces,
        |n| &mut n.presence,
    )?;
    apply_shorthand(
        &mut form,
        "--join-leave-namespaces",
        &config.join_leave_namespaces,
        |n| &mut n.join_leave,
    )?;
    let base_history = HistoryOptions {
        size: config.history_size,
        ttl: config.history_ttl,
    };
    let base = Options {
        history: Some(base_history),
        presence: false,
        join_leave: false,
        client_publish: true,
        anonymous_subscribe: true,
        private: false,
    };
    let defaults = inherit(&form.defaults, &base, base_history)
        .map_err(|m| invalid(format!("defaults: {m}")))?;
    let mut listed = HashMap::with_capacity(form.namespaces.len());
    for n in &form.namespaces {
        let name = n.name.clone().unwrap_or_default();
        let options =
            inherit(n, &defaults, base_history).map_err(|m| invalid(format!("`{name}`: {m}")))?;
        listed.insert(name, options);
    }
    Ok(Namespaces { listed, defaults })
}

/// `form`'s options, each one it leaves out taken from `parent`; a history turned on where
/// the parent has none takes its size and TTL from the flags.
fn inherit(
    form: &OptionsForm,
    parent: &Options,
    base_history: HistoryOptions,
) -> Result<Options, String> {
    let history = match &form.history {
        None => parent.history,
        Some(h) => {
            let from = parent.history.unwrap_or(base_history);
            let ttl = match &h.ttl {
                None => from.ttl,
                Some(ttl) => humantime::parse_duration(ttl)
                    .map_err(|e| format!("history.ttl {ttl:?}: {e} (use e.g. 30s, 5m, 24h)"))?,
            };
            h.enabled
                .unwrap_or(parent.history.is_some())
                .then_some(HistoryOptions {
                    size: h.size.unwrap_or(from.size),
                    ttl,
                })
        }
    };
    Ok(Options {
        history,
        presence: form.presence.unwrap_or(parent.presence),
        join_leave: form.join_leave.unwrap_or(parent.join_leave),
        client_publish: form.client_publish.unwrap_or(parent.client_publish),
        anonymous_subscribe: form
            .anonymous_subscribe
            .unwrap_or(parent.anonymous_subscribe),
        private: form.private.unwrap_or(parent.private),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str, flags: &[&str]) -> Result<Namespaces, NamespacesError> {
        let config = Config::from_args(flags.iter().copied()).unwrap();
        let form: FileForm =
            serde_json::from_str(json).map_err(|source| NamespacesError::Parse {
                origin: "t.json".into(),
                source,
            })?;
        resolve(form, &config, "t.json")
    }

    #[test]
    fn listed_namespaces_inherit_the_defaults_and_the_flags() {
        let ns = load(
            r#"{"defaults": {"history": {"ttl": "1h"}, "clientPublish": false},
                "namespaces": [
                  {"name": "typing", "history": {"enabled": false}},
                  {"name": "chat", "presence": true, "history": {"size": 50}},
                  {"name": "default", "anonymousSubscribe": false},
                  {"name": "secret", "private": true}
                ]}"#,
            &["--history-size", "7"],
        )
        .unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(ns.of("typing:room-1").history, None);
        assert!(!ns.of("typing:room-1").client_publish, "from the defaults");
        assert_eq!(
            ns.of("chat:room-1").history,
            Some(HistoryOptions {
                size: 50,
                ttl: hour
            })
        );
        assert!(ns.of("chat:x").presence && !ns.of("chat:x").join_leave);
        assert!(!ns.of("lobby").anonymous_subscribe, "`default` is a name");
        assert!(ns.of("secret:x").private && !ns.of("chat:x").private);
        let other = ns.of("news:x");
        assert_eq!(other.history, Some(HistoryOptions { size: 7, ttl: hour }));
        assert!(other.anonymous_subscribe && !other.presence);
        assert_eq!(ns.min_history_ttl(), Some(hour));
    }

    #[test]
    fn history_turned_on_under_defaults_without_one_takes_the_flags() {
        let ns = load(
            r#"{"defaults": {"history": {"enabled": false}},
                "namespaces": [{"name": "chat", "history": {"enabled": true}}]}"#,
            &["--history-size", "9", "--history-ttl", "5m"],
        )
        .unwrap();
        assert_eq!(ns.of("x").history, None);
        assert_eq!(
            ns.of("chat:a").history,
            Some(HistoryOptions {
                size: 9,
                ttl: Duration::from_secs(300)
            })
        );
    }

    #[test]
    fn shorthand_flags_turn_options_on_and_refuse_contradictions() {
        let ns = load(
            r#"{"namespaces": [{"name": "chat", "joinLeave": true}]}"#,
            &[
                "--presence-namespaces",
                "chat,room",
                "--join-leave-namespaces",
                "*",
            ],
        )
        .unwrap();
        assert!(ns.of("chat:a").presence && ns.of("room:a").presence);
        assert!(!ns.of("news:a").presence);
        assert!(ns.of("news:a").join_leave, "`*` is the defaults");
        let e = load(
            r#"{"namespaces": [{"name": "chat", "presence": false}]}"#,
            &["--presence-namespaces", "chat"],
        )
        .unwrap_err();
        assert!(matches!(e, NamespacesError::Contradiction(_)));
        assert!(e.to_string().contains("--presence-namespaces"), "{e}");
        assert!(e.to_string().contains("`chat`"), "{e}");
        let e = load(
            r#"{"namespaces": [{"name": "typing", "joinLeave": false}]}"#,
            &["--join-leave-namespaces", "*"],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`typing`"), "{e}");
        let e = load(
            r#"{"defaults": {"presence": false}}"#,
            &["--presence-namespaces", "*"],
        )
        .unwrap_err();
        assert!(matches!(e, NamespacesError::Contradiction(_)));
        // Not a contradiction: the file says nothing, or says on.
        load(
            r#"{"defaults": {"presence": true}}"#,
            &["--presence-namespaces", "*"],
        )
        .unwrap();
    }

    #[test]
    fn invalid_files_are_refused_with_what_is_wrong() {
        let err = |json: &str| load(json, &[]).unwrap_err().to_string();
        assert!(err(r#"{"namespaces": [{"presence": true}]}"#).contains("needs a `name`"));
        assert!(err(r#"{"namespaces": [{"name": "a:b"}]}"#).contains("\"a:b\""));
        assert!(err(r#"{"namespaces": [{"name": ""}]}"#).contains("must be 1-64"));
        assert!(err(r#"{"namespaces": [{"name": "a"}, {"name": "a"}]}"#).contains("listed twice"));
        assert!(err(r#"{"defaults": {"name": "x"}}"#).contains("takes no `name`"));
        assert!(
            err(r#"{"namespaces": [{"name": "a", "history": {"ttl": "soon"}}]}"#)
                .contains("history.ttl")
        );
        assert!(err(r#"{"namespaces": [{"name": "a", "presense": true}]}"#).contains("presense"));
        assert!(err(r#"{"namespaces": [{"name": "a", "presence": "yes"}]}"#).contains("line 1"));
        assert!(err("[").contains("not valid"));
        assert!(is_valid_name(&"n".repeat(MAX_NAME_LEN)));
        assert!(!is_valid_name(&"n".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn the_json_the_operator_renders_is_understood() {
        // chat-operator's rendering of a `spec.channels` (operator/src/api/channels.rs).
        let ns = load(
            r#"{"defaults":{"history":{"size":500}},"namespaces":[{"name":"typing","history":{"enabled":false},"private":true},{"name":"chat","history":{"ttl":"1h"},"presence":true,"joinLeave":true,"clientPublish":true,"anonymousSubscribe":false}]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(ns.of("typing:a").history, None);
        assert!(ns.of("typing:a").private);
        let chat = ns.of("chat:a");
        assert!(chat.presence && chat.join_leave && !chat.anonymous_subscribe);
        assert_eq!(
            chat.history,
            Some(HistoryOptions {
                size: 500,
                ttl: Duration::from_secs(3600)
            })
        );
    }

    #[test]
    fn no_file_is_the_flags() {
        let ns = load("{}", &["--presence-namespaces", "chat"]).unwrap();
        assert!(ns.of("chat:a").presence);
        let d = ns.defaults();
        assert!(d.client_publish && d.anonymous_subscribe && !d.presence);
        assert_eq!(d.history.unwrap().size, 1000);
    }
}
