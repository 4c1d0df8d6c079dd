//! A real Redis Cluster: `redis-server --cluster-enabled yes` processes on free loopback ports,
//! the 16384 slots split evenly over the primaries with `CLUSTER ADDSLOTSRANGE`, joined with
//! `CLUSTER MEET`, optionally replicas of each primary (`CLUSTER REPLICATE`), ready once every
//! node reports `cluster_state:ok` and every replica's link to its primary is up.
//!
//! ```no_run
//! # async fn demo() {
//! let mut cluster = test_harness::redis::cluster::RedisCluster::start(3).await;
//! let url = cluster.url(); // redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>
//! let shard = cluster.node_for_slot(cluster.key_slot("{chat:a}").await);
//! cluster.node_mut(shard).kill();
//! cluster.restart_node(shard).await; // rejoins with its slots (nodes.conf kept), no data
//! # }
//! ```

use std::time::{Duration, Instant};

use super::{RedisOptions, RedisServer};
use crate::Error;

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// How long `start` waits for `cluster_state:ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Servers forming one Redis Cluster; every server is stopped on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    tls: bool,
    /// Slot range `[start, end]` served by each primary (same order as `nodes`).
    ranges: Vec<(u16, u16)>,
    /// Replicas per primary.
    replicas: usize,
}

impl RedisCluster {
    /// Starts `primaries` servers as one cluster and waits for `cluster_state:ok`. Panics with
    /// the reason when it cannot (see [`RedisCluster::try_start`]).
    pub async fn start(primaries: usize) -> Self {
        match Self::try_start(primaries).await {
            Ok(cluster) => cluster,
            Err(err) => panic!("test harness: redis cluster did not start: {err}"),
        }
    }

    /// Fallible [`RedisCluster::start`].
    pub async fn try_start(primaries: usize) -> Result<Self, Error> {
        Self::try_start_inner(primaries, 0, None, true).await
    }

    /// [`RedisCluster::start`] with `cluster-require-full-coverage no`: while a shard is down
    /// the others keep serving their slots (with the default `yes`, every node refuses keyed
    /// commands with `CLUSTERDOWN` once a shard has failed, until a replica replaces it).
    pub async fn start_partial_coverage(primaries: usize) -> Self {
        match Self::try_start_inner(primaries, 0, None, false).await {
            Ok(cluster) => cluster,
            Err(err) => panic!("test harness: redis cluster did not start: {err}"),
        }
    }

    /// [`RedisCluster::start`] with `replicas` replicas of each primary: `nodes()[..primaries]`
    /// are the primaries (in slot order), replica `j` of primary `i` is
    /// `nodes()[primaries + i * replicas + j]`. A primary killed for longer than the node
    /// timeout (2 s) is failed over to its replica by the cluster itself.
    pub async fn start_with_replicas(primaries: usize, replicas: usize) -> Self {
        match Self::try_start_inner(primaries, replicas, None, true).await {
            Ok(cluster) => cluster,
            Err(err) => panic!("test harness: redis cluster with replicas did not start: {err}"),
        }
    }

    /// [`RedisCluster::start`] with TLS for clients and the cluster bus (`--tls-cluster yes`):
    /// every node's certificate comes from one private CA ([`RedisCluster::ca_path`]) and
    /// [`RedisCluster::url`] is `rediss+cluster://…`.
    pub async fn start_tls(primaries: usize) -> Self {
        let ca = super::tls::TestCa::generate().expect("generate a test CA");
        match Self::try_start_inner(primaries, 0, Some(ca), true).await {
            Ok(cluster) => cluster,
            Err(err) => panic!("test harness: TLS redis cluster did not start: {err}"),
        }
    }

    /// The PEM file of the CA of a TLS cluster.
    pub fn ca_path(&self) -> Option<&std::path::Path> {
        self.nodes[0].ca_path()
    }

    async fn try_start_inner(
        primaries: usize,
        replicas: usize,
        ca: Option<super::tls::TestCa>,
        full_coverage: bool,
    ) -> Result<Self, Error> {
        assert!(primaries >= 1, "a cluster needs at least one primary");
        let total = primaries * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        let mut bus_ports = Vec::with_capacity(total);
        for _ in 0..total {
            let bus_port = crate::free_port();
            bus_ports.push(bus_port);
            let options = RedisOptions::default()
                .arg("--cluster-enabled")
                .arg("yes")
                // The bus port defaults to port + 10000, past 65535 for high ephemeral ports;
                // pick a free one (kept across restarts, as the peers remember it).
                .arg("--cluster-port")
                .arg(bus_port.to_string())
                // Short, so a killed node is noticed quickly by its peers.
                .arg("--cluster-node-timeout")
                .arg("2000")
                .arg("--cluster-require-full-coverage")
                .arg(if full_coverage { "yes" } else { "no" });
            let options = match &ca {
                Some(ca) => options.tls_with(ca.clone()).arg("--tls-cluster").arg("yes"),
                None => options,
            };
            nodes.push(RedisServer::try_start_with(options).await?);
        }
        let per_node = SLOTS / primaries as u16;
        let ranges: Vec<(u16, u16)> = (0..primaries as u16)
            .map(|i| {
                let start = i * per_node;
                let end = if i + 1 == primaries as u16 {
                    SLOTS - 1
                } else {
                    start + per_node - 1
                };
                (start, end)
            })
            .collect();
        for (node, (start, end)) in nodes.iter().zip(&ranges) {
            node.command(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &start.to_string(),
                &end.to_string(),
            ])
            .await?;
        }
        for (other, bus_port) in nodes.iter().zip(&bus_ports).skip(1) {
            let (port, bus_port) = (other.port().to_string(), bus_port.to_string());
            nodes[0]
                .command(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus_port])
                .await?;
        }
        let cluster = Self {
            nodes,
            tls: ca.is_some(),
            ranges,
            replicas,
        };
        for i in 0..primaries {
            let primary = cluster.nodes[i].command(&["CLUSTER", "MYID"]).await?;
            for j in 0..replicas {
                let replica = &cluster.nodes[primaries + i * replicas + j];
                cluster.replicate(replica, primary.trim()).await?;
            }
        }
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,…` (the form chat-node's `--redis-url`
    /// takes; `rediss+cluster://` with the TLS ports for [`RedisCluster::start_tls`]).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}", hosts.join(","))
    }

    /// How many primaries it started with (`nodes()[..primaries()]`).
    pub fn primaries(&self) -> usize {
        self.ranges.len()
    }

    /// The servers: the primaries in slot order, then the replicas.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One server, e.g. to [`RedisServer::kill`] it.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, so the `{hash tag}` rule is Redis's own).
    pub async fn key_slot(&self, key: &str) -> u16 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.process.is_some())
            .expect("a running cluster node");
        let slot = node
            .command(&["CLUSTER", "KEYSLOT", key])
            .await
            .expect("CLUSTER KEYSLOT");
        slot.parse().expect("a slot number")
    }

    /// `CLUSTER REPLICATE <primary>` on `replica`, once it has learnt of the primary by gossip.
    async fn replicate(&self, replica: &RedisServer, primary: &str) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match replica.command(&["CLUSTER", "REPLICATE", primary]).await {
                Ok(_) => return Ok(()),
                // "ERR Unknown node": the MEET has not reached it yet.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Index of the node that serves `slot` as started (a failover moves it: see
    /// [`RedisCluster::primary_for_slot`]).
    pub fn node_for_slot(&self, slot: u16) -> usize {
        self.ranges
            .iter()
            .position(|(start, end)| (*start..=*end).contains(&slot))
            .expect("every slot is assigned")
    }

    /// Index of the node that serves `slot` now, as the running nodes' `CLUSTER NODES` say
    /// (a primary not flagged `fail`); `None` while no node does.
    pub async fn primary_for_slot(&self, slot: u16) -> Option<usize> {
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            let Ok(table) = node.command(&["CLUSTER", "NODES"]).await else {
                continue;
            };
            for line in table.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let serves = fields[8..].iter().any(|range| {
                    let mut bounds = range.split('-').map(|b| b.parse::<u16>());
                    match (bounds.next(), bounds.next()) {
                        (Some(Ok(start)), Some(Ok(end))) => (start..=end).contains(&slot),
                        (Some(Ok(only)), None) => only == slot,
                        _ => false,
                    }
                });
                if !serves {
                    continue;
                }
                let port = fields[1].split(['@', ',']).next()?.rsplit(':').next()?;
                return self.nodes.iter().position(|n| n.port().to_string() == port);
            }
            return None;
        }
        None
    }

    /// Resharding, first half, as `redis-cli --cluster reshard` does it: `slot` is marked
    /// IMPORTING on primary `to` and MIGRATING on the primary serving it, and every key of the
    /// slot is moved with `MIGRATE`. Until [`RedisCluster::finish_slot_migration`] the old owner
    /// answers commands on the slot's keys with `ASK` redirects to `to`. Returns the old owner.
    pub async fn start_slot_migration(&self, slot: u16, to: usize) -> Result<usize, Error> {
        let from = self
            .primary_for_slot(slot)
            .await
            .ok_or_else(|| Error::Other(format!("no primary serves slot {slot}")))?;
        if from == to {
            return Err(Error::Other(format!(
                "node {to} already serves slot {slot}"
            )));
        }
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let source_id = source.command(&["CLUSTER", "MYID"]).await?;
        let target_id = target.command(&["CLUSTER", "MYID"]).await?;
        let (source_id, target_id) = (source_id.trim(), target_id.trim());
        let slot_arg = slot.to_string();
        target
            .command(&["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", source_id])
            .await?;
        source
            .command(&["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", target_id])
            .await?;
        let port = target.plain_port().to_string();
        loop {
            let keys = source
                .command(&["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"])
                .await?;
            if keys.is_empty() {
                return Ok(from);
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000"];
            if let Some(password) = source.password() {
                migrate.extend(["AUTH", password]);
            }
            migrate.push("KEYS");
            migrate.extend(keys.lines());
            source.command(&migrate).await?;
        }
    }

    /// Resharding, second half: primary `to` owns `slot` (`SETSLOT NODE` on it, then on every
    /// other primary, as `redis-cli` does), and waits until every node agrees.
    pub async fn finish_slot_migration(&self, slot: u16, to: usize) -> Result<(), Error> {
        let target_id = self.nodes[to].command(&["CLUSTER", "MYID"]).await?;
        let slot_arg = slot.to_string();
        let setslot = ["CLUSTER", "SETSLOT", &slot_arg, "NODE", target_id.trim()];
        self.nodes[to].command(&setslot).await?;
        for (i, node) in self.nodes[..self.primaries()].iter().enumerate() {
            if i != to && node.process.is_some() {
                node.command(&setslot).await?;
            }
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.primary_for_slot(slot).await != Some(to) {
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "slot {slot} not served by node {to} after its migration"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_ok().await
    }

    /// Restarts a node (same port, its `nodes.conf` kept, no data) and waits until the cluster
    /// is `ok` again.
    pub async fn restart_node(&mut self, index: usize) {
        self.nodes[index].restart().await;
        if let Err(err) = self.wait_ok().await {
            panic!("test harness: redis cluster not ok after restarting node {index}: {err}");
        }
    }

    /// Waits until every node reports `cluster_state:ok` and knows all the others, and every
    /// replica's link to its primary is up.
    pub async fn wait_ok(&self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let mut last = String::new();
            let mut all_ok = true;
            for node in &self.nodes {
                let replica_linked = || async {
                    let replication = node.command(&["INFO", "replication"]).await?;
                    Ok::<bool, Error>(
                        !replication.contains("role:slave")
                            || replication.contains("master_link_status:up"),
                    )
                };
                match node.command(&["CLUSTER", "INFO"]).await {
                    Ok(info) if info.contains("cluster_state:ok") && info.contains(&known) => {
                        if self.replicas > 0 && !matches!(replica_linked().await, Ok(true)) {
                            all_ok = false;
                            last = format!("port {}: replica link not up", node.port());
                        }
                    }
                    Ok(info) => {
                        all_ok = false;
                        last = format!("port {}: {}", node.port(), info.replace("\r\n", " "));
                    }
                    Err(err) => {
                        all_ok = false;
                        last = err.to_string();
                    }
                }
            }
            if all_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: "redis cluster".into(),
                    waited: READY_TIMEOUT,
                    last_error: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
