//! Every Redis script, run with each of its writes refused: nothing may be lost or
//! multiplied. A command that fails inside a Lua script does not undo the writes before
//! it, so each script checks its permissions before its first write and copies before it
//! removes. Real redis-server, real ACL users (selectors refuse one command on one key).

use std::collections::HashMap;

use snowplow_relay::queue::{
    DeadLetter, DeadLetterFilter, Entry, Move, Parked, Queue, QueueError, Reading,
};

use crate::support::*;

const USER: &str = "relay";

/// The key patterns the relay uses; a refusal allows the command on all but one.
const PATTERNS: &[&str] = &[
    "snowplow",
    "{snowplow}:dead",
    "{snowplow}:inflight:*",
    "{snowplow}:retry:*",
    "{snowplow}:instance:*",
    "{snowplow}:lease:*",
    "{snowplow}:instances",
];

/// Lets user `relay` run everything.
fn allow_all(redis: &RedisServer) {
    redis.cmd(&[
        "ACL", "SETUSER", USER, "reset", "on", ">pw", "~*", "&*", "+@all",
    ]);
}

/// Lets user `relay` run everything but `command` on keys matching `pattern`.
fn refuse(redis: &RedisServer, command: &str, pattern: &str) {
    let mut rule = format!("(+{command}");
    for other in PATTERNS.iter().filter(|p| **p != pattern) {
        rule.push_str(" ~");
        rule.push_str(other);
    }
    rule.push(')');
    let minus = format!("-{command}");
    redis.cmd(&[
        "ACL", "SETUSER", USER, "reset", "on", ">pw", "~*", "&*", "+@all", &minus, &rule,
    ]);
}

/// A queue connected as user `relay`.
async fn queue(redis: &RedisServer) -> Queue {
    allow_all(redis);
    connect_queue(&format!("redis://{USER}:pw@127.0.0.1:{}", redis.port)).await
}

/// Every event id in Redis and how many times it is there, wherever it is (list,
/// in-flight, retry and dead-letter lists, any instance).
fn census(redis: &RedisServer) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for key in redis.keys() {
        let is_list: String = redis::cmd("TYPE")
            .arg(&key)
            .query(&mut redis.conn())
            .unwrap();
        if is_list != "list" {
            continue;
        }
        for item in redis.lrange(&key) {
            // Dead-letter and retry entries: metadata line, then the element.
            let element = match item.iter().position(|&b| b == b'\n') {
                Some(at) => item[at + 1..].to_vec(),
                None => item,
            };
            let text = String::from_utf8_lossy(&element);
            if let Some(at) = text.find("\"eid\":\"") {
                let rest = &text[at + 7..];
                let eid = &rest[..rest.find('"').unwrap()];
                *counts.entry(eid.to_owned()).or_default() += 1;
            }
        }
    }
    counts
}

/// Runs `step` with each of `writes` refused in turn: each refusal must name the command
/// and key and change nothing at all; then, with everything allowed, the step runs and
/// `check` looks at the outcome.
async fn each_write_refused(
    name: &str,
    writes: &[(&str, &str)],
    prepare: impl AsyncFn(&RedisServer) -> Queue,
    step: impl AsyncFn(&Queue) -> Result<(), QueueError>,
    check: impl Fn(&RedisServer),
) {
    for (command, pattern) in writes {
        let redis = RedisServer::start();
        let queue = prepare(&redis).await;
        let before = redis.snapshot();
        let events_in = census(&redis);
        refuse(&redis, command, pattern);
        let refused = step(&queue).await;
        let why = format!("{name} with {command} refused on {pattern}: {refused:?}");
        match &refused {
            Err(QueueError::Permission(text)) => {
                assert!(
                    text.to_ascii_lowercase().contains(command),
                    "{why}: the error names the command"
                );
            }
            _ => panic!("{why}: a permission error expected"),
        }
        assert!(
            before == redis.snapshot(),
            "{why}: the script wrote something before it was refused"
        );
        let after = census(&redis);
        let vanished = events_in.keys().filter(|e| !after.contains_key(*e)).count();
        let duplicates: usize = after.values().map(|n| n.saturating_sub(1)).sum();
        eprintln!(
            "{name:>8}, {:>5} {:<24} refused: events in Redis {}, after {}, duplicates {duplicates}, vanished {vanished}, keys unchanged",
            command.to_uppercase(),
            pattern,
            events_in.len(),
            after.len(),
        );
        allow_all(&redis);
        step(&queue)
            .await
            .unwrap_or_else(|e| panic!("{name} allowed again: {e}"));
        check(&redis);
        // Run again, as a retry after a lost reply would: nothing multiplies.
        let settled = census(&redis);
        let _ = step(&queue).await;
        assert_eq!(
            settled,
            census(&redis),
            "{name} run twice multiplied entries"
        );
    }
}

fn once_each(redis: &RedisServer, total: usize) {
    let counts = census(redis);
    assert_eq!(counts.len(), total, "every event somewhere: {counts:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "no event twice: {counts:?}"
    );
}

fn big_event(eid: &str) -> String {
    format!(
        r#"{{"e":"pv","p":"pc","tv":"t","eid":"{eid}","url":"{}"}}"#,
        "x".repeat(3_000)
    )
}

#[tokio::test]
async fn claim_refused_at_any_write_loses_nothing() {
    each_write_refused(
        "claim",
        &[
            ("rpush", "{snowplow}:inflight:*"),
            ("rpush", "{snowplow}:dead"),
            ("hset", "{snowplow}:instance:*"),
            ("ltrim", "snowplow"),
        ],
        async |redis| {
            let mut events = numbered_events(10);
            events.insert(3, big_event("big"));
            redis.rpush(LIST, &events);
            let queue = queue(redis).await;
            queue.register().await.unwrap();
            queue
        },
        async |queue| queue.claim(0, 20, 2_000, 100_000).await.map(|_| ()),
        |redis| {
            once_each(redis, 11);
            assert_eq!(redis.llen(LIST), 0);
            assert_eq!(redis.llen("{snowplow}:dead"), 1, "the oversized one");
        },
    )
    .await;
}

#[tokio::test]
async fn ack_refused_at_any_write_loses_nothing() {
    each_write_refused(
        "ack",
        &[
            ("rpush", "{snowplow}:dead"),
            ("rpush", "{snowplow}:retry:*"),
            ("hset", "{snowplow}:instance:*"),
            ("ltrim", "{snowplow}:inflight:*"),
        ],
        async |redis| {
            redis.rpush(LIST, &numbered_events(10));
            let queue = queue(redis).await;
            queue.register().await.unwrap();
            queue.claim(0, 10, 100_000, 1_000_000).await.unwrap();
            queue
        },
        async |queue| {
            let dead =
                DeadLetter::new("rejected", "collector answered 400", Some(400), "r").meta_line();
            let parked = parked_meta(4);
            let events = numbered_events(10);
            queue
                .ack(
                    0,
                    6,
                    &[
                        (2, dead_entry(&dead, &events[2])),
                        (4, parked_entry(&parked, &events[4])),
                    ],
                )
                .await
        },
        |redis| {
            // Positions 0..6 acknowledged: 4 delivered (gone), 1 dead, 1 parked; 4 in flight.
            let counts = census(redis);
            assert_eq!(counts.len(), 6, "{counts:?}");
            assert!(counts.values().all(|&n| n == 1), "{counts:?}");
            assert!(counts.contains_key("ev-2") && counts.contains_key("ev-4"));
            assert_eq!(redis.llen("{snowplow}:dead"), 1);
        },
    )
    .await;
}

/// A dead-letter entry for `element` with metadata `meta`.
fn dead_entry<'a>(meta: &'a [u8], element: &'a str) -> Entry<'a> {
    Entry::Dead {
        meta,
        element: element.as_bytes(),
    }
}

/// A retry-list entry for `element` with metadata `meta`.
fn parked_entry<'a>(meta: &'a [u8], element: &'a str) -> Entry<'a> {
    Entry::Parked {
        meta,
        element: element.as_bytes(),
    }
}

fn parked_meta(position: u64) -> Vec<u8> {
    Parked {
        position,
        parked_at: "2026-11-30T00:00:00Z".into(),
        status: Some(500),
        attempts: 3,
        relay: "r".into(),
    }
    .meta_line()
}

/// A registered queue with 10 events claimed, positions 2 and 4 parked, 0..6 acked.
async fn with_parked(redis: &RedisServer) -> Queue {
    redis.rpush(LIST, &numbered_events(10));
    let queue = queue(redis).await;
    queue.register().await.unwrap();
    queue.claim(0, 10, 100_000, 1_000_000).await.unwrap();
    let (two, four) = (parked_meta(2), parked_meta(4));
    let events = numbered_events(10);
    queue
        .ack(
            0,
            6,
            &[
                (2, parked_entry(&two, &events[2])),
                (4, parked_entry(&four, &events[4])),
            ],
        )
        .await
        .unwrap();
    queue
}

#[tokio::test]
async fn settling_parked_events_refused_at_any_write_loses_nothing() {
    each_write_refused(
        "settle",
        &[("rpush", "{snowplow}:dead"), ("lrem", "{snowplow}:retry:*")],
        with_parked,
        async |queue| {
            let dead = DeadLetter::new("failed_alone", "failed alone", Some(500), "r").meta_line();
            queue.settle_parked(&[(2, None), (4, Some(&dead))]).await
        },
        |redis| {
            let counts = census(redis);
            assert!(!counts.contains_key("ev-2"), "delivered: gone");
            assert_eq!(counts.get("ev-4"), Some(&1), "dead-lettered once");
            assert_eq!(counts.len(), 5, "{counts:?}");
        },
    )
    .await;
}

#[tokio::test]
async fn release_refused_at_any_write_loses_nothing_and_keeps_claim_order() {
    each_write_refused(
        "release",
        &[
            ("lpush", "snowplow"),
            ("rpush", "{snowplow}:dead"),
            ("del", "{snowplow}:inflight:*"),
            ("del", "{snowplow}:retry:*"),
            ("del", "{snowplow}:instance:*"),
            ("del", "{snowplow}:lease:*"),
            ("srem", "{snowplow}:instances"),
        ],
        async |redis| {
            let queue = with_parked(redis).await;
            redis.rpush(LIST, &numbered_events(12)[10..]);
            queue
        },
        async |queue| {
            // Window from 6: 6 delivered, 7 dead, 8 and 9 pending; parked 2 delivered.
            let dead =
                DeadLetter::new("rejected", "collector answered 400", Some(400), "r").meta_line();
            let seventh = numbered_events(10)[7].clone();
            queue
                .release(
                    6,
                    &[true, true],
                    10,
                    &[(7, &dead, seventh.as_bytes())],
                    &[2],
                )
                .await
                .map(|_| ())
        },
        |redis| {
            let counts = census(redis);
            // Back in the list: parked 4, pending 8 and 9, then the two never claimed.
            let list: Vec<String> = redis
                .lrange(LIST)
                .iter()
                .map(|e| {
                    let t = String::from_utf8_lossy(e);
                    let at = t.find("\"eid\":\"").unwrap() + 7;
                    t[at..at + t[at..].find('"').unwrap()].to_owned()
                })
                .collect();
            assert_eq!(list, ["ev-4", "ev-8", "ev-9", "ev-10", "ev-11"]);
            assert_eq!(counts.get("ev-7"), Some(&1), "dead-lettered once");
            assert_eq!(counts.len(), 6, "{counts:?}");
            assert_eq!(
                redis
                    .keys()
                    .iter()
                    .filter(|k| k.contains("inflight")
                        || k.contains("retry")
                        || k.contains("lease:")
                        || k.contains("instance:"))
                    .count(),
                0
            );
        },
    )
    .await;
}

#[tokio::test]
async fn abandon_refused_at_any_write_loses_nothing() {
    each_write_refused(
        "abandon",
        &[
            ("lpush", "snowplow"),
            ("del", "{snowplow}:inflight:*"),
            ("del", "{snowplow}:retry:*"),
            ("del", "{snowplow}:instance:*"),
            ("del", "{snowplow}:lease:*"),
            ("srem", "{snowplow}:instances"),
        ],
        with_parked,
        async |queue| queue.abandon().await.map(|_| ()),
        |redis| {
            // The two parked and the four in flight, in claim order.
            let counts = census(redis);
            assert_eq!(counts.len(), 6, "{counts:?}");
            assert_eq!(redis.llen(LIST), 6);
        },
    )
    .await;
}

#[tokio::test]
async fn recovery_refused_at_any_write_loses_nothing() {
    each_write_refused(
        "recover",
        &[
            ("lpush", "snowplow"),
            ("del", "{snowplow}:inflight:*"),
            ("del", "{snowplow}:retry:*"),
            ("del", "{snowplow}:instance:*"),
            ("srem", "{snowplow}:instances"),
        ],
        async |redis| {
            // A dead relay: parked and in-flight events, its lease gone.
            let dead = with_parked(redis).await;
            redis.cmd(&["DEL", &dead.keys().lease(dead.instance())]);
            queue(redis).await
        },
        async |queue| queue.recover_expired().await.map(|_| ()),
        |redis| {
            let counts = census(redis);
            assert_eq!(counts.len(), 6, "{counts:?}");
            assert!(counts.values().all(|&n| n == 1));
            assert_eq!(redis.llen(LIST), 6);
        },
    )
    .await;
}

#[tokio::test]
async fn register_heartbeat_and_replay_refused_change_nothing() {
    each_write_refused(
        "register",
        &[
            ("sadd", "{snowplow}:instances"),
            ("hset", "{snowplow}:instance:*"),
            ("set", "{snowplow}:lease:*"),
        ],
        queue,
        async |queue| queue.register().await,
        |redis| assert_eq!(instances(redis).len(), 1),
    )
    .await;
    each_write_refused(
        "heartbeat",
        &[("set", "{snowplow}:lease:*")],
        async |redis| {
            let queue = queue(redis).await;
            queue.register().await.unwrap();
            queue
        },
        async |queue| queue.heartbeat().await,
        |_| {},
    )
    .await;
    each_write_refused(
        "replay",
        &[("rpush", "snowplow"), ("ltrim", "{snowplow}:dead")],
        async |redis| {
            let entries: Vec<String> = numbered_events(5)
                .iter()
                .map(|e| {
                    String::from_utf8(
                        DeadLetter::new("rejected", "r", None, "x").encode(e.as_bytes()),
                    )
                    .unwrap()
                })
                .collect();
            redis.rpush("{snowplow}:dead", &entries);
            queue(redis).await
        },
        async |queue| queue.replay_dead_letters(3).await.map(|_| ()),
        |redis| {
            once_each(redis, 5);
            assert_eq!(redis.llen(LIST), 3);
        },
    )
    .await;
}

/// Six dead letters, alternating `rejected` (even eids) and `malformed` (odd).
fn six_dead_letters(redis: &RedisServer) {
    let entries: Vec<String> = numbered_events(6)
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let reason = if i % 2 == 0 { "rejected" } else { "malformed" };
            String::from_utf8(DeadLetter::new(reason, "r", None, "x").encode(e.as_bytes())).unwrap()
        })
        .collect();
    redis.rpush("{snowplow}:dead", &entries);
}

/// A queue connected as user `relay` to a Redis holding [`six_dead_letters`].
async fn holding_six_dead_letters(redis: &RedisServer) -> Queue {
    six_dead_letters(redis);
    queue(redis).await
}

fn rejected_only() -> DeadLetterFilter {
    DeadLetterFilter {
        reasons: vec!["rejected".into()],
        ..DeadLetterFilter::default()
    }
}

/// The eids in a list, in order (elements or dead-letter entries).
fn eids(redis: &RedisServer, key: &str) -> Vec<String> {
    redis
        .lrange(key)
        .iter()
        .map(|item| {
            let text = String::from_utf8_lossy(item);
            let at = text.find("\"eid\":\"").unwrap() + 7;
            text[at..at + text[at..].find('"').unwrap()].to_owned()
        })
        .collect()
}

#[tokio::test]
async fn filtered_replay_and_drop_refused_at_any_write_lose_nothing() {
    // 582e716 had no filter: its replay took the oldest entries whatever they were.
    each_write_refused(
        "replay",
        &[
            ("rpush", "snowplow"),
            ("rpush", "{snowplow}:dead"),
            ("ltrim", "{snowplow}:dead"),
        ],
        holding_six_dead_letters,
        async |queue| {
            queue
                .move_dead_letters(&rejected_only(), 4, Move::Replay, u64::MAX)
                .await
                .map(|_| ())
        },
        |redis| {
            once_each(redis, 6);
            assert_eq!(
                eids(redis, LIST),
                ["ev-0", "ev-2"],
                "the rejected of the four read"
            );
            assert_eq!(
                eids(redis, DEAD),
                ["ev-4", "ev-5", "ev-1", "ev-3"],
                "the rest, those read behind those not yet read, in their order"
            );
        },
    )
    .await;
    each_write_refused(
        "drop",
        &[("rpush", "{snowplow}:dead"), ("ltrim", "{snowplow}:dead")],
        holding_six_dead_letters,
        async |queue| {
            queue
                .move_dead_letters(&rejected_only(), 6, Move::Drop, u64::MAX)
                .await
                .map(|_| ())
        },
        |redis| {
            assert_eq!(redis.llen(LIST), 0);
            assert_eq!(eids(redis, DEAD), ["ev-1", "ev-3", "ev-5"]);
        },
    )
    .await;
}

/// A pass reads each entry that was there when it began once, in steps, whatever relays
/// write meanwhile, and leaves the entries it keeps in their order; reading writes
/// nothing.
#[tokio::test]
async fn a_pass_in_steps_reads_each_entry_once_while_relays_write_behind_it() {
    let redis = RedisServer::start();
    six_dead_letters(&redis);
    let queue = queue(&redis).await;
    let before = redis.snapshot();
    let (read, rejected) = queue
        .select_dead_letters(&rejected_only(), 0, 10, Reading::NewestFirst)
        .await
        .unwrap();
    assert_eq!(read, 6);
    let newest_first: Vec<String> = rejected
        .iter()
        .map(|e| DeadLetter::decode(e).unwrap().1.to_vec())
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e).unwrap()["eid"].to_string())
        .collect();
    assert_eq!(newest_first, ["\"ev-4\"", "\"ev-2\"", "\"ev-0\""]);
    assert_eq!(
        queue
            .count_dead_letters(&rejected_only(), 2, 10)
            .await
            .unwrap(),
        (4, 2),
        "from index 2 on"
    );
    assert!(before == redis.snapshot(), "reading wrote something");

    let mut read = 0;
    while read < 6 {
        let (step, _) = queue
            .move_dead_letters(&rejected_only(), 2, Move::Drop, u64::MAX)
            .await
            .unwrap();
        read += step;
        // A relay dead-letters another rejected event between the steps.
        let late = DeadLetter::new("rejected", "r", None, "x")
            .encode(format!(r#"{{"eid":"late-{read}"}}"#).as_bytes());
        redis.rpush_bytes(DEAD, &late);
    }
    assert_eq!(read, 6);
    let left = eids(&redis, DEAD);
    assert_eq!(
        left.iter()
            .filter(|e| e.starts_with("ev-"))
            .collect::<Vec<_>>(),
        ["ev-1", "ev-3", "ev-5"],
        "the kept ones, in their order: {left:?}"
    );
    assert_eq!(
        left.iter().filter(|e| e.starts_with("late-")).count(),
        3,
        "written meanwhile: not read, not dropped: {left:?}"
    );
}

/// A failure no permission check foresees (a key of the wrong type, created behind the
/// relay's back) stops the claim after its first write: the copies are in the in-flight
/// list, the originals still in the list. Duplicates, never a loss; the next call sees
/// the counters do not match, and abandoning returns the copies once.
#[tokio::test]
async fn a_claim_stopped_halfway_at_run_time_leaves_duplicates_never_a_loss() {
    let redis = RedisServer::start();
    let mut events = numbered_events(10);
    events.insert(3, big_event("big"));
    redis.rpush(LIST, &events);
    let queue = queue(&redis).await;
    queue.register().await.unwrap();
    redis.cmd(&["SET", "{snowplow}:dead", "not a list"]);
    let claim = queue.claim(0, 20, 2_000, 100_000).await;
    assert!(claim.is_err(), "{claim:?}");
    let counts = census(&redis);
    assert_eq!(counts.len(), 11, "every event somewhere: {counts:?}");
    let mismatch = queue.claim(0, 20, 2_000, 100_000).await;
    assert!(
        matches!(mismatch, Err(QueueError::StateMismatch(_))),
        "{mismatch:?}"
    );
    queue.abandon().await.unwrap();
    let counts = census(&redis);
    assert_eq!(counts.len(), 11);
    assert!(
        counts.values().all(|&n| n <= 2),
        "copied back once: {counts:?}"
    );
}

/// An acknowledgement that ran but whose reply was lost, then a shutdown: the release
/// gets the same dead-letter entries again and must not write them twice.
#[tokio::test]
async fn a_lost_ack_reply_then_release_writes_each_dead_letter_once() {
    let redis = RedisServer::start();
    redis.rpush(LIST, &numbered_events(10));
    let queue = queue(&redis).await;
    queue.register().await.unwrap();
    queue.claim(0, 10, 100_000, 1_000_000).await.unwrap();
    let dead = DeadLetter::new("rejected", "collector answered 400", Some(400), "r").meta_line();
    let events = numbered_events(10);
    let entries: Vec<(u64, Entry)> = (0..5)
        .map(|p| (p, dead_entry(&dead, &events[p as usize])))
        .collect();
    queue.ack(0, 5, &entries).await.unwrap();
    // The relay never saw that reply: its window still starts at 0.
    let dead_by_position: Vec<(u64, &[u8], &[u8])> = (0..5)
        .map(|p| (p, &dead[..], events[p as usize].as_bytes()))
        .collect();
    queue
        .release(0, &[true; 5], 10, &dead_by_position, &[])
        .await
        .unwrap();
    assert_eq!(redis.llen("{snowplow}:dead"), 5, "each dead-lettered once");
    assert_eq!(redis.llen(LIST), 5, "the unresolved five went back");
    once_each(&redis, 10);
}

/// Someone who can write the relay's keys shifts its in-flight list by one element (the
/// head popped, another element pushed at the tail: the counters still agree). The
/// acknowledgement must not dead-letter (or park) the element that now sits at a
/// position in place of the one the relay claimed there: it fails as a mismatch, and the
/// relay then returns what it holds, resolved or not. (On 582e716 the neighbour was
/// dead-lettered and the refused event trimmed away.)
#[tokio::test]
async fn an_in_flight_list_shifted_behind_the_relays_back_is_a_mismatch() {
    let redis = RedisServer::start();
    let events = numbered_events(10);
    redis.rpush(LIST, &events);
    let queue = queue(&redis).await;
    queue.register().await.unwrap();
    queue.claim(0, 10, 100_000, 1_000_000).await.unwrap();
    let inflight = redis
        .keys()
        .into_iter()
        .find(|k| k.starts_with("{snowplow}:inflight:"))
        .unwrap();
    redis.cmd(&["LPOP", &inflight]);
    redis.cmd(&[
        "RPUSH",
        &inflight,
        "{\"e\":\"pv\",\"p\":\"pc\",\"tv\":\"t\"}",
    ]);
    let dead = DeadLetter::new("rejected", "collector answered 400", Some(400), "r").meta_line();
    let ack = queue.ack(0, 6, &[(2, dead_entry(&dead, &events[2]))]).await;
    assert!(
        matches!(
            ack,
            Err(snowplow_relay::queue::QueueError::StateMismatch(_))
        ),
        "{ack:?}"
    );
    assert_eq!(
        redis.llen(DEAD),
        0,
        "no dead-letter entry from another element"
    );
    assert_eq!(redis.llen(&inflight), 10, "nothing trimmed");
}
