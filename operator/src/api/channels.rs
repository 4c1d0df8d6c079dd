//! `spec.channels`: per-namespace channel options of chat-node (docs/protocol.md, "Channel
//! namespaces"). The shape is chat-node's own `--namespaces` JSON, so the operator renders it
//! as it is stored (`CHAT_NAMESPACES`), with nothing to translate.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A channel namespace's history.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelHistory {
    /// `false`: no history at all (e.g. typing indicators): nothing is stored in Redis, messages
    /// carry no offset and cannot be recovered. Default: inherited (on unless turned off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Messages kept per channel. Default: inherited (`spec.node.historySize`, 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub size: Option<i64>,

    /// How long a channel's history lives after its last message. Default: inherited
    /// (`spec.node.historyTtl`, 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,9}(ms|s|m|h)$') && duration(self) >= duration('1s')")
        .message("history.ttl must be a duration of at least 1s, such as 1h"))]
    pub ttl: Option<String>,
}

/// What the channels of a namespace do. Every field is optional: unset means inherited from
/// `spec.channels.defaults` (for a listed namespace) or from chat-node's defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelOptions {
    /// History on or off, its size and TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ChannelHistory>,

    /// `presence` / `presence_stats` answer who is subscribed (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,

    /// Subscribers get `join` / `leave` frames (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,

    /// Clients may publish (default on); off, only the server API publishes (announcements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_publish: Option<bool>,

    /// Clients without a user (a token without `sub`, or every client of a cluster without
    /// auth) may subscribe (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_subscribe: Option<bool>,
    /// Private: subscribing needs a per-channel subscription token (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
}

/// The options of one channel namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelNamespace {
    /// The namespace: the part of a channel name before the first `:` (`typing` for
    /// `typing:room-1`; `default` for names without `:`).
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_./-]+$')")
        .message("a channel namespace name is 1-64 characters of A-Z a-z 0-9 _ - . / (the part of a channel name before ':')"))]
    pub name: String,

    /// History on or off, its size and TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ChannelHistory>,

    /// `presence` / `presence_stats` answer who is subscribed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,

    /// Subscribers get `join` / `leave` frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,

    /// Clients may publish; off, only the server API publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_publish: Option<bool>,

    /// Clients without a user may subscribe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_subscribe: Option<bool>,
    /// Private: subscribing needs a per-channel subscription token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
}

/// Per-namespace channel options: the listed namespaces and the defaults for every other one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelsSpec {
    /// Options of channels of no listed namespace (and what listed ones inherit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<ChannelOptions>,

    /// Namespaces with their own options, each name once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(a, self.filter(b, b.name == a.name).size() == 1)")
        .message("spec.channels.namespaces lists a name twice: each namespace may appear once"))]
    pub namespaces: Option<Vec<ChannelNamespace>>,
}

impl ChannelsSpec {
    /// chat-node's `CHAT_NAMESPACES` value: this spec as JSON (the shapes are the same).
    pub fn to_node_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chat_nodes_own_json() {
        let spec: ChannelsSpec = serde_json::from_value(serde_json::json!({
            "defaults": {"history": {"size": 500}},
            "namespaces": [
                {"name": "typing", "history": {"enabled": false}, "private": true},
                {"name": "chat", "presence": true, "joinLeave": true,
                 "history": {"ttl": "1h"}, "clientPublish": true, "anonymousSubscribe": false}
            ]
        }))
        .unwrap();
        assert_eq!(
            spec.to_node_json(),
            r#"{"defaults":{"history":{"size":500}},"namespaces":[{"name":"typing","history":{"enabled":false},"private":true},{"name":"chat","history":{"ttl":"1h"},"presence":true,"joinLeave":true,"clientPublish":true,"anonymousSubscribe":false}]}"#
        );
        assert_eq!(ChannelsSpec::default().to_node_json(), "{}");
    }
}
