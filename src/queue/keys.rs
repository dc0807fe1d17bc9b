//! The key names of one list and one instance, the version of their layout, and how a
//! key is shown in a log line.

/// The version of the key layout this build reads and writes, kept in Redis in the hash
/// [`Keys::layout`] (field `version`). A build that changes what a key holds or adds a
/// key that holds events bumps it, says so in the CHANGELOG's "Upgrading" part and adds
/// its case to `tests/upgrades.rs`.
///
/// 1. The list, in-flight lists, instance hashes, leases and the set of instances (no
///    version stored: builds before 0314bee).
/// 2. Retry lists of parked events (0314bee); the version stored from 0.2.0 on. A Redis
///    without a version holds layout 1 or 2, both of which this build reads.
pub const LAYOUT_VERSION: u64 = 2;

use super::errors::one_line;

/// The key names for one list and one instance.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The list producers push onto.
    pub list: String,
    /// The dead-letter list.
    pub dead: String,
    /// The set of registered instances.
    pub instances: String,
    /// The hash holding the key layout's version ([`LAYOUT_VERSION`]).
    pub layout: String,
    /// Prefix of every companion key: `{list}:`.
    pub prefix: String,
}

impl Keys {
    /// Key names for `list`, with dead-letter list `dead`.
    pub fn new(list: &str, dead: &str) -> Keys {
        let prefix = format!("{{{list}}}:");
        Keys {
            list: list.to_owned(),
            dead: dead.to_owned(),
            instances: format!("{prefix}instances"),
            layout: format!("{prefix}layout"),
            prefix,
        }
    }

    /// The in-flight list of `instance`.
    pub fn inflight(&self, instance: &str) -> String {
        format!("{}inflight:{instance}", self.prefix)
    }

    /// The retry list (parked events) of `instance`.
    pub fn retry(&self, instance: &str) -> String {
        format!("{}retry:{instance}", self.prefix)
    }

    /// The bookkeeping hash of `instance`.
    pub fn meta(&self, instance: &str) -> String {
        format!("{}instance:{instance}", self.prefix)
    }

    /// The lease (heartbeat) key of `instance`.
    pub fn lease(&self, instance: &str) -> String {
        format!("{}lease:{instance}", self.prefix)
    }
}

/// One of the keys a script is given (its `KEYS[i]` in the order the call names them).
#[derive(Debug, Clone, Copy)]
pub(super) enum Key {
    List,
    Dead,
    Instances,
    Inflight,
    Meta,
    Lease,
    Retry,
    Layout,
}

impl Keys {
    /// Every key name one instance's scripts use, built once per instance rather than
    /// once per call.
    pub(super) fn for_instance(&self, instance: &str) -> InstanceKeys {
        InstanceKeys {
            names: [
                self.list.clone(),
                self.dead.clone(),
                self.instances.clone(),
                self.inflight(instance),
                self.meta(instance),
                self.lease(instance),
                self.retry(instance),
                self.layout.clone(),
            ],
        }
    }
}

/// The names of [`Key`]s for one list and instance, in [`Key`]'s order.
#[derive(Debug, Clone)]
pub(super) struct InstanceKeys {
    names: [String; 8],
}

impl InstanceKeys {
    /// The name of `key`.
    pub(super) fn name(&self, key: Key) -> &str {
        &self.names[key as usize]
    }
}

/// A key fit for a log line: escaped and cut (a key can be a megabyte long and hold
/// control characters).
pub fn shown_key(key: &str) -> String {
    const MAX: usize = 128;
    let escaped = one_line(key);
    if escaped.len() <= MAX {
        return escaped;
    }
    let mut end = MAX;
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &escaped[..end], key.len())
}
