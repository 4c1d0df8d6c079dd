//! The gRPC server API driven by a gRPC client other than the project's own: `grpcurl`
//! (built from Go modules by hack/setup.d/32-grpcurl.sh), which learns the service through
//! server reflection alone (no proto file given). One call per mode: unary (Publish, History),
//! server streaming, client streaming, bidirectional.

mod common;

use std::process::Stdio;

use common::{Node, WAIT};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const KEY: &str = "grpcurl-key-0123456789abcdef";

struct Grpcurl {
    key_file: std::path::PathBuf,
}

impl Grpcurl {
    /// Runs grpcurl with `args` (after the connection flags), `stdin` as its input; returns
    /// whether it succeeded, and its stdout.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut command = Command::new(test_harness::tools::grpcurl());
        command
            .args(["-plaintext", "-H", &format!("authorization: apikey {KEY}")])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("run grpcurl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("grpcurl finishes in time")
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn method(&self, name: &str) -> String {
        format!("chatcluster.api.v1.ServerApi/{name}")
    }
}

impl Drop for Grpcurl {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

/// grpcurl prints one JSON object per response, pretty-printed one after another.
fn objects(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| v.expect("grpcurl prints JSON"))
        .collect()
}

#[tokio::test]
async fn one_call_per_mode_through_reflection() {
    let key_file = std::env::temp_dir().join(format!("chat-grpcurl-key-{}", fastrand::u64(..)));
    std::fs::write(&key_file, KEY).unwrap();
    let node = Node::start_with_api(&["--api-key-file", key_file.to_str().unwrap()]).await;
    let target = node.api.unwrap().to_string();
    let grpcurl = Grpcurl { key_file };

    // Reflection: the services, with no proto file at hand.
    let (ok, out, err) = grpcurl.run(&[&target, "list"], None).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l == "chatcluster.api.v1.ServerApi"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "grpc.health.v1.Health"), "{out}");

    // Unary: a publish reaches a WebSocket client.
    let mut ws = node.connect().await;
    ws.subscribe("chat:curl").await;
    let body = json!({"channel": "chat:curl", "data_json": "{\"n\":1}"}).to_string();
    let (ok, out, err) = grpcurl
        .run(&["-d", &body, &target, &grpcurl.method("Publish")], None)
        .await;
    assert!(ok, "{err}");
    let first = objects(&out)[0]["offset"].as_str().unwrap().to_owned();
    let m = ws.recv_type("message").await;
    assert_eq!(
        (m["offset"].as_str(), &m["data"]),
        (Some(first.as_str()), &json!({"n": 1}))
    );

    // Client streaming: two publishes from stdin, one summary.
    let input = [
        json!({"channel": "chat:curl", "data_json": "2"}),
        json!({"channel": "chat:curl", "data_json": "3"}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    let (ok, out, err) = grpcurl
        .run(
            &["-d", "@", &target, &grpcurl.method("PublishStream")],
            Some(&input),
        )
        .await;
    assert!(ok, "{err}");
    let summary = &objects(&out)[0];
    assert_eq!(summary["published"], "2", "{summary}"); // uint64 prints as a string
    assert_eq!(summary["results"].as_array().unwrap().len(), 2);

    // Server streaming: recover the two after the first publish, then stop at the deadline.
    let body = json!({"channels": ["chat:curl"], "since": first}).to_string();
    let (_, out, _) = grpcurl
        .run(
            &[
                "-max-time",
                "2",
                "-d",
                &body,
                &target,
                &grpcurl.method("Subscribe"),
            ],
            None,
        )
        .await;
    let events = objects(&out);
    assert_eq!(events[0]["subscribed"]["recovered"], "2", "{out}");
    let data: Vec<String> = events[1..]
        .iter()
        .map(|e| {
            e["message"]["dataJson"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(data, ["2", "3"], "{out}");

    // Unary again: the same three as a history page, newest first, with the channel's epoch.
    let body = json!({"channel": "chat:curl", "reverse": true}).to_string();
    let (ok, out, err) = grpcurl
        .run(&["-d", &body, &target, &grpcurl.method("History")], None)
        .await;
    assert!(ok, "{err}");
    let page = &objects(&out)[0];
    let data: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["dataJson"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["3", "2", "{\"n\":1}"], "{out}");
    assert_eq!(page["epoch"], events[0]["subscribed"]["epoch"], "{out}");

    // Bidirectional: subscribe and publish from stdin; the half-close ends the session after
    // the answers.
    let input = [
        json!({"ref": "s", "subscribe": "chat:bot"}),
        json!({"ref": "p", "publish": {"channel": "chat:bot", "data_json": "\"hi\""}}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    let (ok, out, err) = grpcurl
        .run(
            &["-d", "@", &target, &grpcurl.method("Session")],
            Some(&input),
        )
        .await;
    assert!(ok, "{err}");
    let events = objects(&out);
    assert_eq!(events[0]["reply"]["ref"], "s", "{out}");
    assert_eq!(
        events[0]["reply"]["subscribed"]["channel"], "chat:bot",
        "{out}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["reply"]["ref"] == "p" && e["reply"]["offset"].is_string()),
        "{out}"
    );
    node.shutdown().await;
}
