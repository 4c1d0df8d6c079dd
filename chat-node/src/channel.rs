//! Channel names, namespaces and the `channels` claim patterns.

/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 128;

/// A channel name is 1–128 characters of `A-Z a-z 0-9 _ - . : / #` (`#` starts a personal
/// channel's user, see [`personal_user`]).
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'#')
        })
}

/// The user whose personal channel this is: what follows the first `#` (`user:#alice` and
/// `notifications:#alice` are `alice`'s). Only that user may subscribe to it (and read its
/// history and presence); `None` for an ordinary channel. A `#` with nothing after it names
/// nobody: such a channel is nobody's to subscribe to.
pub fn personal_user(name: &str) -> Option<&str> {
    name.split_once('#').map(|(_, user)| user)
}

/// The part before the first `:`, or `default`. Metrics are labelled by namespace, never by
/// channel, so their cardinality stays bounded by what operators name, not what users type.
pub fn namespace(name: &str) -> &str {
    match name.split_once(':') {
        Some((ns, _)) if !ns.is_empty() => ns,
        _ => "default",
    }
}

/// Whether the channel's namespace is in `namespaces` (as flags list them: `chat`, `default`
/// for names without a namespace, `*` for every channel).
pub fn namespace_listed(namespaces: &[String], name: &str) -> bool {
    let ns = namespace(name);
    namespaces.iter().any(|n| n == "*" || n == ns)
}

/// The channels a token allows for one action: `None` = all; otherwise patterns where a trailing `*` matches
/// by prefix (`chat:*`) and anything else matches exactly.
#[derive(Clone, Debug, Default)]
pub struct ChannelPatterns(Option<Vec<String>>);

impl ChannelPatterns {
    pub fn all() -> Self {
        ChannelPatterns(None)
    }

    pub fn only(patterns: Vec<String>) -> Self {
        ChannelPatterns(Some(patterns))
    }

    pub fn allows(&self, channel: &str) -> bool {
        match &self.0 {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => channel.starts_with(prefix),
                None => p == channel,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(is_valid("chat:room-42"));
        assert!(is_valid("a/b.c_d"));
        assert!(!is_valid(""));
        assert!(!is_valid("has space"));
        assert!(!is_valid("brace{x}"));
        assert!(is_valid("user:#alice"));
        assert!(!is_valid(&"x".repeat(129)));
        assert!(is_valid(&"x".repeat(128)));
    }

    #[test]
    fn namespaces() {
        assert_eq!(namespace("chat:room-42"), "chat");
        assert_eq!(namespace("lobby"), "default");
        assert_eq!(namespace(":x"), "default");
        assert_eq!(namespace("a:b:c"), "a");
    }

    #[test]
    fn listed_namespaces() {
        let list = vec!["chat".to_owned(), "default".to_owned()];
        assert!(namespace_listed(&list, "chat:room-1"));
        assert!(namespace_listed(&list, "lobby"));
        assert!(!namespace_listed(&list, "typing:room-1"));
        assert!(!namespace_listed(&[], "chat:x"));
        assert!(namespace_listed(&["*".to_owned()], "typing:room-1"));
    }

    #[test]
    fn personal_channels() {
        assert_eq!(personal_user("user:#alice"), Some("alice"));
        assert_eq!(personal_user("notifications:#bob"), Some("bob"));
        assert_eq!(personal_user("a:b#c#d"), Some("c#d"));
        assert_eq!(personal_user("user:#"), Some(""));
        assert_eq!(personal_user("chat:room"), None);
    }

    #[test]
    fn patterns() {
        let p = ChannelPatterns::only(vec!["chat:*".into(), "news".into()]);
        assert!(p.allows("chat:room-1"));
        assert!(p.allows("news"));
        assert!(!p.allows("news:x"));
        assert!(!p.allows("admin"));
        assert!(ChannelPatterns::all().allows("anything"));
        assert!(!ChannelPatterns::only(vec![]).allows("x"));
    }
}
