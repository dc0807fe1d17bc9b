//! The relay against a local 3-master Redis Cluster on loopback ports.

use std::collections::HashSet;
use std::process::Command;

use crate::support::*;

/// Three `redis-server --cluster-enabled yes` joined with `redis-cli --cluster create`.
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    async fn start() -> Cluster {
        // Each node keeps its nodes.conf in its own directory.
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli comes with redis-server");
        assert!(status.success(), "redis-cli --cluster create failed");
        for node in &nodes {
            wait_until("the cluster is ready", 20, async || {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.conn())
                    .unwrap();
                info.contains("cluster_state:ok")
            })
            .await;
        }
        Cluster { nodes }
    }

    fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(vec![self.nodes[0].url()]).unwrap()
    }

    /// The node holding `key`'s slot.
    fn owner(&self, key: &str) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query::<i64>(&mut n.conn())
                    .is_ok_and(|e| e == 1)
            })
            .expect("the key exists on one node")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_through_a_three_master_cluster() {
    let cluster = Cluster::start().await;
    let collector = Collector::start().await;
    let total = 3000;
    let events = numbered_events(total);
    let mut conn = cluster.client().get_connection().unwrap();
    // A relay that died holding the first 100: its keys share the list's slot.
    redis::cmd("SADD")
        .arg("{snowplow}:instances")
        .arg("ghost")
        .query::<i64>(&mut conn)
        .unwrap();
    redis::cmd("RPUSH")
        .arg("{snowplow}:inflight:ghost")
        .arg(&events[..100])
        .query::<i64>(&mut conn)
        .unwrap();
    for chunk in events[100..].chunks(500) {
        redis::cmd("RPUSH")
            .arg("snowplow")
            .arg(chunk)
            .query::<i64>(&mut conn)
            .unwrap();
    }
    // A malformed element, to exercise the dead-letter list in the cluster too.
    redis::cmd("RPUSH")
        .arg("snowplow")
        .arg("not json")
        .query::<i64>(&mut conn)
        .unwrap();
    let owner_port = cluster.owner("snowplow").port;
    // Point the relay at a node that does NOT own the list: it must follow the slot.
    let seed = cluster.nodes.iter().find(|n| n.port != owner_port).unwrap();
    let settings = config(
        seed,
        &collector,
        &[("redis.cluster", "true"), ("collector.buffer_size", "50")],
    );
    let relay = Relay::start(settings);
    collector.until_delivered(total, 30).await;
    // An event pushed while the relay waits on the empty list arrives too.
    redis::cmd("RPUSH")
        .arg("snowplow")
        .arg(with_eid(&events[0], "late"))
        .query::<i64>(&mut conn)
        .unwrap();
    wait_until("the late event", 10, async || {
        collector.delivered().len() > total
    })
    .await;
    let summary = relay.stop().await;

    let unique: HashSet<String> = collector.delivered_eids().into_iter().collect();
    assert_eq!(unique.len(), total + 1);
    assert_eq!(summary.delivered as usize, total + 1);
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(
        summary.redelivered, 100,
        "the dead relay's events were recovered"
    );
    let owner = cluster.nodes.iter().find(|n| n.port == owner_port).unwrap();
    assert_eq!(
        owner.llen("{snowplow}:dead"),
        1,
        "the dead-letter list shares the list's slot"
    );
    let mut keys: Vec<String> = cluster.nodes.iter().flat_map(|n| n.keys()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "{snowplow}:dead".to_owned(),
            // Kept for a day, so that a recovered relay coming back knows what happened.
            "{snowplow}:recovered:ghost".to_owned()
        ],
        "in-flight keys removed at shutdown"
    );
}
