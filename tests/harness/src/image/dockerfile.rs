//! The part of the Dockerfile language the offline builder understands: single-stage images
//! `FROM scratch` whose files all come from the build context. That is exactly what the
//! project's Dockerfiles use (they `COPY` binaries built outside the image), so the same file
//! builds with `docker build` and here, without a daemon or a registry.
//!
//! Supported: `# comments`, line continuations, `ARG` (with defaults, `${NAME}`/`$NAME`
//! substitution in later lines), `FROM scratch`, `COPY [--chown=UID[:GID]] [--chmod=MODE] SRC...
//! DEST`, `ENV`, `USER`, `WORKDIR`, `EXPOSE`, `LABEL`, `ENTRYPOINT`, `CMD` (JSON form),
//! `STOPSIGNAL`. Anything else (`RUN`, `ADD`, another base image, a second stage) is an error that
//! names the line: it would need a container runtime or a registry.

use std::collections::BTreeMap;

/// A parse error with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct ParseError {
    /// Line of the instruction (its first line when continued).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// One `COPY` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Sources, relative to the build context.
    pub sources: Vec<String>,
    /// Destination in the image (absolute, or relative to `WORKDIR`).
    pub dest: String,
    /// `--chown` numeric owner.
    pub uid: u64,
    /// `--chown` numeric group.
    pub gid: u64,
    /// `--chmod` mode for every copied file and directory.
    pub mode: Option<u32>,
}

/// What a Dockerfile describes: layers (one per `COPY`) and the image configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipe {
    /// The `COPY` instructions in order.
    pub copies: Vec<Copy>,
    /// `ENV` values (later ones win), in the order first set.
    pub env: Vec<(String, String)>,
    /// `USER`.
    pub user: Option<String>,
    /// `WORKDIR`.
    pub workdir: Option<String>,
    /// `EXPOSE` ports, as `8080/tcp`.
    pub exposed: Vec<String>,
    /// `LABEL`s.
    pub labels: BTreeMap<String, String>,
    /// `ENTRYPOINT`.
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    pub cmd: Option<Vec<String>>,
    /// `STOPSIGNAL`.
    pub stop_signal: Option<String>,
}

/// Parses `text`; `build_args` override `ARG` defaults (like `docker build --build-arg`).
pub fn parse(text: &str, build_args: &BTreeMap<String, String>) -> Result<Recipe, ParseError> {
    let mut recipe = Recipe::default();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_from = false;
    for (line, instruction) in logical_lines(text) {
        let err = |message: String| ParseError { line, message };
        let (keyword, rest) = match instruction.split_once(char::is_whitespace) {
            Some((k, r)) => (k.to_ascii_uppercase(), r.trim().to_string()),
            None => (instruction.to_ascii_uppercase(), String::new()),
        };
        if keyword == "ARG" {
            let (name, default) = match rest.split_once('=') {
                Some((n, d)) => (n.trim().to_string(), Some(unquote(d.trim()))),
                None => (rest.trim().to_string(), None),
            };
            if name.is_empty() {
                return Err(err("ARG needs a name".into()));
            }
            let value = build_args
                .get(&name)
                .cloned()
                .or(default)
                .unwrap_or_default();
            args.insert(name, value);
            continue;
        }
        let rest = substitute(&rest, &args, &recipe.env);
        if keyword == "FROM" {
            if seen_from {
                return Err(err(
                    "a second FROM: multi-stage builds need a container runtime; COPY prebuilt files instead".into(),
                ));
            }
            if rest.split_whitespace().next() != Some("scratch") {
                return Err(err(format!(
                    "FROM {rest}: only `FROM scratch` can be built without a registry"
                )));
            }
            seen_from = true;
            continue;
        }
        if !seen_from {
            return Err(err(format!("{keyword} before FROM")));
        }
        match keyword.as_str() {
            "COPY" => recipe.copies.push(parse_copy(&rest).map_err(err)?),
            "ENV" => {
                for (k, v) in key_values(&rest).map_err(err)? {
                    match recipe.env.iter_mut().find(|(name, _)| *name == k) {
                        Some(slot) => slot.1 = v,
                        None => recipe.env.push((k, v)),
                    }
                }
            }
            "LABEL" => recipe.labels.extend(key_values(&rest).map_err(err)?),
            "USER" => recipe.user = Some(nonempty(&rest, "USER").map_err(err)?),
            "WORKDIR" => {
                let dir = nonempty(&rest, "WORKDIR").map_err(err)?;
                recipe.workdir = Some(match (&recipe.workdir, dir.starts_with('/')) {
                    (Some(base), false) => format!("{}/{dir}", base.trim_end_matches('/')),
                    (None, false) => format!("/{dir}"),
                    (_, true) => dir,
                });
            }
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
                    if number.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                        return Err(err(format!("EXPOSE {port}: not a port")));
                    }
                    recipe.exposed.push(format!("{number}/{proto}"));
                }
            }
            "ENTRYPOINT" => recipe.entrypoint = Some(json_array(&rest).map_err(err)?),
            "CMD" => recipe.cmd = Some(json_array(&rest).map_err(err)?),
            "STOPSIGNAL" => recipe.stop_signal = Some(nonempty(&rest, "STOPSIGNAL").map_err(err)?),
            other => {
                return Err(err(format!(
                    "{other} is not supported by the offline builder (it would need a container runtime)"
                )));
            }
        }
    }
    if !seen_from {
        return Err(ParseError {
            line: 1,
            message: "no FROM".into(),
        });
    }
    Ok(recipe)
}

/// Joins continued lines and drops comments and blank lines; yields (first line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (start, mut buffer) = current.take().unwrap_or((index + 1, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            buffer.push_str(body);
            buffer.push(' ');
            current = Some((start, buffer));
        } else {
            buffer.push_str(trimmed);
            if !buffer.trim().is_empty() {
                out.push((start, buffer.trim().to_string()));
            }
        }
    }
    if let Some((start, buffer)) = current
        && !buffer.trim().is_empty()
    {
        out.push((start, buffer.trim().to_string()));
    }
    out
}

/// `${NAME}` and `$NAME` from ARGs and ENVs (ENV wins, as in Docker); unknown names become "".
fn substitute(text: &str, args: &BTreeMap<String, String>, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| args.get(name).cloned())
            .unwrap_or_default()
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
            out.push_str(&lookup(&name));
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
            } else {
                out.push_str(&lookup(&name));
            }
        }
    }
    out
}

fn parse_copy(rest: &str) -> Result<Copy, String> {
    let mut words: Vec<String> = if rest.trim_start().starts_with('[') {
        json_array(rest)?
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    let mut uid = 0;
    let mut gid = 0;
    let mut mode = None;
    while words.first().is_some_and(|w| w.starts_with("--")) {
        let flag = words.remove(0);
        if let Some(owner) = flag.strip_prefix("--chown=") {
            let (u, g) = owner.split_once(':').unwrap_or((owner, owner));
            uid = u.parse().map_err(|_| {
                format!("--chown={owner}: use numeric ids (no /etc/passwd at build time)")
            })?;
            gid = g.parse().map_err(|_| {
                format!("--chown={owner}: use numeric ids (no /etc/passwd at build time)")
            })?;
        } else if let Some(m) = flag.strip_prefix("--chmod=") {
            mode = Some(
                u32::from_str_radix(m, 8).map_err(|_| format!("--chmod={m}: not an octal mode"))?,
            );
        } else {
            return Err(format!(
                "COPY {flag} is not supported (--from needs a second stage)"
            ));
        }
    }
    if words.len() < 2 {
        return Err("COPY needs a source and a destination".into());
    }
    let dest = words.pop().expect("two or more words");
    for source in &words {
        if source.contains(['*', '?', '[']) {
            return Err(format!("COPY {source}: wildcards are not supported"));
        }
        if source.starts_with('/') || source.split('/').any(|part| part == "..") {
            return Err(format!(
                "COPY {source}: sources must stay inside the build context"
            ));
        }
    }
    Ok(Copy {
        sources: words,
        dest,
        uid,
        gid,
        mode,
    })
}

fn key_values(rest: &str) -> Result<Vec<(String, String)>, String> {
    let words = shell_words(rest)?;
    if words.len() == 2 && !words[0].contains('=') {
        // legacy `ENV KEY value`
        return Ok(vec![(words[0].clone(), words[1].clone())]);
    }
    words
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("`{w}` is not KEY=value"))
        })
        .collect()
}

/// Splits on whitespace, honouring double and single quotes and backslash escapes.
fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

fn unquote(text: &str) -> String {
    shell_words(text)
        .ok()
        .and_then(|w| w.into_iter().next())
        .unwrap_or_default()
}

fn json_array(rest: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(rest).map_err(|_| {
        format!("`{rest}`: use the JSON (exec) form, e.g. [\"/usr/local/bin/app\"]: no shell in the image")
    })
}

fn nonempty(rest: &str, what: &str) -> Result<String, String> {
    let value = rest.trim();
    if value.is_empty() {
        Err(format!("{what} needs a value"))
    } else {
        Ok(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Recipe {
        parse(text, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_scratch_image_with_copies_and_config() {
        let recipe = parse_ok(
            "# syntax=docker/dockerfile:1.7\n\
             ARG VERSION=0.1.0\n\
             FROM scratch\n\
             COPY rootfs/ /\n\
             COPY --chown=65532:65532 --chmod=0755 \\\n    bin/app /usr/local/bin/app\n\
             ENV A=1 B=\"two words\"\n\
             LABEL org.opencontainers.image.version=${VERSION}\n\
             USER 65532:65532\n\
             WORKDIR /data\n\
             EXPOSE 8080 9091/tcp\n\
             ENTRYPOINT [\"/usr/local/bin/app\"]\n\
             CMD [\"run\"]\n",
        );
        assert_eq!(recipe.copies.len(), 2);
        assert_eq!(recipe.copies[1].sources, ["bin/app"]);
        assert_eq!(recipe.copies[1].dest, "/usr/local/bin/app");
        assert_eq!((recipe.copies[1].uid, recipe.copies[1].gid), (65532, 65532));
        assert_eq!(recipe.copies[1].mode, Some(0o755));
        assert_eq!(
            recipe.env,
            [("A".into(), "1".into()), ("B".into(), "two words".into())]
        );
        assert_eq!(recipe.labels["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(recipe.user.as_deref(), Some("65532:65532"));
        assert_eq!(recipe.workdir.as_deref(), Some("/data"));
        assert_eq!(recipe.exposed, ["8080/tcp", "9091/tcp"]);
        assert_eq!(
            recipe.entrypoint.as_deref(),
            Some(&["/usr/local/bin/app".to_string()][..])
        );
        assert_eq!(recipe.cmd.as_deref(), Some(&["run".to_string()][..]));
    }

    #[test]
    fn build_args_override_defaults() {
        let args = BTreeMap::from([("VERSION".to_string(), "9.9.9".to_string())]);
        let recipe = parse("ARG VERSION=1\nFROM scratch\nLABEL v=$VERSION\n", &args).unwrap();
        assert_eq!(recipe.labels["v"], "9.9.9");
    }

    #[test]
    fn what_needs_a_runtime_or_registry_is_refused_with_its_line() {
        let cases = [
            ("FROM debian:12\n", 1, "only `FROM scratch`"),
            ("FROM scratch\nRUN echo hi\n", 2, "RUN is not supported"),
            ("FROM scratch\nFROM scratch\n", 2, "multi-stage"),
            ("FROM scratch\nCOPY --from=build /a /b\n", 2, "--from"),
            (
                "FROM scratch\nCOPY ../secret /x\n",
                2,
                "inside the build context",
            ),
            ("FROM scratch\nENTRYPOINT /bin/app\n", 2, "JSON (exec) form"),
            (
                "FROM scratch\nCOPY --chown=nonroot a /a\n",
                2,
                "numeric ids",
            ),
            ("COPY a /a\n", 1, "before FROM"),
        ];
        for (text, line, message) in cases {
            let err = parse(text, &BTreeMap::new()).expect_err(text);
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.message.contains(message), "{text}: {err}");
        }
    }
}
