//! Benchmark (ignored by default): bulk publish through the gRPC client stream `PublishStream`
//! into one real chat-node process with the embedded broker. Reports messages per second and the
//! node's CPU time per message (user + system, from `/proc/<pid>/stat`). Run it in release:
//!
//! ```sh
//! cargo test --release -p chat-node --test grpc_bulk -- --ignored --nocapture
//! ```
//!
//! Results are recorded in docs/benchmarks.md ("Bulk publish over gRPC").

mod common;

use std::time::Instant;

use chat_node::server_api::proto;
use chat_node::server_api::proto::server_api_client::ServerApiClient;
use common::binary::Binary;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const KEY: &str = "bulk-bench-key-0123456789abcdef";

/// The process's CPU time so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which ends with the last ')'): utime and stime are the
    // 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / rustix::param::clock_ticks_per_second() as f64
}

#[tokio::test]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
async fn bulk_publish_through_client_streaming() {
    // Ten full streams (one carries at most MAX_STREAM_PUBLISHES), one after another.
    const PER_STREAM: usize = chat_node::server_api::grpc::MAX_STREAM_PUBLISHES;
    const STREAMS: usize = 10;
    const MESSAGES: usize = PER_STREAM * STREAMS;
    let key_file = std::env::temp_dir().join(format!("chat-bulk-key-{}", fastrand::u64(..)));
    std::fs::write(&key_file, KEY).unwrap();
    let node = Binary::start(
        "true",
        &[
            "--api-listen",
            "127.0.0.1:0",
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
    )
    .await;
    let channel = Channel::from_shared(format!("http://{}", node.api.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = ServerApiClient::new(channel);
    let data =
        r#"{"text":"a message of about one hundred bytes, like a short line of chat in a room"}"#;
    for round in 0..2 {
        let cpu_before = cpu_seconds(node.pid());
        let started = Instant::now();
        for _ in 0..STREAMS {
            let publishes =
                futures_util::stream::iter((0..PER_STREAM).map(move |i| proto::PublishRequest {
                    channel: format!("bench:room-{}", i % 100),
                    data_json: data.to_owned(),
                }));
            let mut request = Request::new(publishes);
            let value: MetadataValue<_> = format!("apikey {KEY}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
            let summary = api.publish_stream(request).await.unwrap().into_inner();
            assert_eq!(summary.published as usize, PER_STREAM);
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(node.pid()) - cpu_before;
        println!(
            "round {round}: {MESSAGES} publishes in {wall:.2} s = {:.0} msg/s; node CPU {cpu:.2} s = {:.2} µs/msg",
            MESSAGES as f64 / wall,
            cpu * 1e6 / MESSAGES as f64
        );
    }
    let _ = std::fs::remove_file(&key_file);
}
