//! The internal envelope of a message in Redis (stream field `e`, and the Pub/Sub payload
//! after `<offset> `). Versioned and compact; `tc` is the reserved W3C trace context.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Message, TraceContext};
use crate::offset::Offset;

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u8,
    f: &'a str,
    t: u64,
    d: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    tc: Option<&'a TraceContext>,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    f: String,
    t: u64,
    d: Box<RawValue>,
    #[serde(default)]
    tc: Option<TraceContext>,
}

/// Encodes the parts of a message that travel with it.
pub fn encode(from: &str, ts_us: u64, data: &RawValue, trace: Option<&TraceContext>) -> String {
    serde_json::to_string(&EnvelopeOut {
        v: 1,
        f: from,
        t: ts_us,
        d: data,
        tc: trace,
    })
    .unwrap_or_default()
}

/// Decodes an envelope read from Redis.
pub fn decode(channel: &str, offset: Offset, bytes: &[u8]) -> Result<Message, serde_json::Error> {
    let e: EnvelopeIn = serde_json::from_slice(bytes)?;
    Ok(Message {
        channel: channel.to_owned(),
        offset,
        from: e.f,
        ts_us: e.t,
        data: e.d,
        trace: e.tc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_trace_context() {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let tc = TraceContext {
            traceparent: "00-abc-def-01".into(),
            tracestate: None,
        };
        let bytes = encode("u1", 42, &data, Some(&tc));
        let m = decode("c", Offset::new(1, 0), bytes.as_bytes()).unwrap();
        assert_eq!(
            (m.from.as_str(), m.ts_us, m.data.get()),
            ("u1", 42, r#"{"text":"hi"}"#)
        );
        assert_eq!(m.trace, Some(tc));
    }
}
