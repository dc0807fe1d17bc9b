//! The key names of one list and one instance, and how a key is shown in a log line.

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
            ],
        }
    }
}

/// The names of [`Key`]s for one list and instance, in [`Key`]'s order.
#[derive(Debug, Clone)]
pub(super) struct InstanceKeys {
    names: [String; 7],
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
