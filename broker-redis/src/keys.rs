//! Key names. Every key starts with the namespace (`broker` by default).
//! A topic's keys share the hash tag `{t:<topic>}` and the registry's the
//! tag `{r}`, so that each script touches one Redis Cluster hash slot.

use broker_core::TopicName;

/// The parts of a topic's state, one key each.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    /// The stream of messages, entry id `<offset + 1>-0`.
    Log,
    /// The next offset (the counter INCRBY numbers a batch with).
    Next,
    /// The oldest retained offset (absent: 0), moved by retention.
    First,
    /// The log's message id prefix (12 hex digits).
    Prefix,
    /// The payload bytes ever appended (a running total; each entry's `s`
    /// is the total up to it, for retention by bytes).
    Bytes,
    /// Idempotency keys: a hash of key → `<fingerprint hex>:<offset>:<subscribers>:<published ms>`.
    Keys,
    /// The same keys by published ms (a sorted set), to forget the oldest.
    KeyOrder,
}

impl Part {
    const ALL: [Part; 7] = [
        Part::Log,
        Part::Next,
        Part::First,
        Part::Prefix,
        Part::Bytes,
        Part::Keys,
        Part::KeyOrder,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Part::Log => "log",
            Part::Next => "next",
            Part::First => "first",
            Part::Prefix => "prefix",
            Part::Bytes => "bytes",
            Part::Keys => "idem",
            Part::KeyOrder => "idem-order",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    namespace: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Self {
        Keys {
            namespace: namespace.to_owned(),
        }
    }

    /// Registrations: a hash of record id → `broker_core::codec` JSON.
    pub(crate) fn registrations(&self) -> String {
        format!("{}:{{r}}:registrations", self.namespace)
    }

    /// Subscribers' cursors: a hash of subscriber id → offset.
    pub(crate) fn cursors(&self) -> String {
        format!("{}:{{r}}:cursors", self.namespace)
    }

    /// A subscriber's pending retries: a hash of offset → `attempts:due ms`.
    pub(crate) fn retries(&self, subscriber: &str) -> String {
        format!("{}:{{r}}:retries:{subscriber}", self.namespace)
    }

    /// A subscriber's attempt log: a sorted set of encoded records by
    /// `seq` (µs since the epoch).
    pub(crate) fn attempts(&self, subscriber: &str) -> String {
        format!("{}:{{r}}:attempts:{subscriber}", self.namespace)
    }

    /// An owner's dead letters: a sorted set of JSON members by offset.
    pub(crate) fn dead_letters(&self, owner: &str) -> String {
        format!("{}:{{r}}:dead:{owner}", self.namespace)
    }

    /// What makes a registration the same across replicas: a hash of
    /// `c|<role>|<topic>|<name>` (publishers, listeners) or
    /// `s|<topic>|<METHOD>|<url>` (subscribers) → record id, and
    /// `id:<id>` → that field, to forget it with the registration.
    pub(crate) fn names(&self) -> String {
        format!("{}:{{r}}:names", self.namespace)
    }

    /// Counts registration changes and topic deletions (each change's
    /// announcement carries its number, so a follower sees what it missed).
    pub(crate) fn version(&self) -> String {
        format!("{}:{{r}}:version", self.namespace)
    }

    /// The replicas alive: a sorted set of replica id by the Redis time
    /// (ms) until which it is.
    pub(crate) fn replicas(&self) -> String {
        format!("{}:{{r}}:replicas", self.namespace)
    }

    /// The lease on a subscriber's deliveries: the holding replica's id,
    /// with a TTL.
    pub(crate) fn lease(&self, subscriber: &str) -> String {
        format!("{}:{{r}}:lease:{subscriber}", self.namespace)
    }

    /// A secret every replica shares (the key tokens are minted with):
    /// set once, by whichever replica comes first.
    pub(crate) fn secret(&self, name: &str) -> String {
        format!("{}:{{r}}:secret:{name}", self.namespace)
    }

    /// A lock (a consumer group's): the holder's token, with a TTL.
    pub(crate) fn lock(&self, name: &str) -> String {
        format!("{}:{{r}}:lock:{name}", self.namespace)
    }

    /// The Pub/Sub channel every change is announced on.
    pub(crate) fn channel(&self) -> String {
        format!("{}:changes", self.namespace)
    }

    pub(crate) fn topic(&self, topic: &TopicName, part: Part) -> String {
        format!(
            "{}:{{t:{}}}:{}",
            self.namespace,
            topic.as_str(),
            part.suffix()
        )
    }

    /// Every key of a topic.
    pub(crate) fn topic_all(&self, topic: &TopicName) -> Vec<String> {
        Part::ALL.iter().map(|&p| self.topic(topic, p)).collect()
    }

    /// The `SCAN MATCH` pattern of every topic's log (the namespace holds
    /// no glob characters: checked when the store opens).
    pub(crate) fn log_pattern(&self) -> String {
        format!("{}:{{t:*}}:log", self.namespace)
    }

    /// The topic whose log `key` is.
    pub(crate) fn topic_of_log(&self, key: &str) -> Option<TopicName> {
        let name = key
            .strip_prefix(self.namespace.as_str())?
            .strip_prefix(":{t:")?
            .strip_suffix("}:log")?;
        TopicName::new(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_s_keys_share_one_hash_tag() {
        let keys = Keys::new("broker");
        let t = TopicName::new("orders.eu-1").unwrap();
        assert_eq!(keys.topic(&t, Part::Log), "broker:{t:orders.eu-1}:log");
        assert_eq!(keys.topic(&t, Part::Next), "broker:{t:orders.eu-1}:next");
        assert_eq!(keys.registrations(), "broker:{r}:registrations");
        assert_eq!(keys.dead_letters("grp_t/g}x"), "broker:{r}:dead:grp_t/g}x");
        assert_eq!(
            keys.topic_of_log("broker:{t:orders.eu-1}:log"),
            Some(t.clone())
        );
        assert_eq!(keys.topic_of_log("other:{t:orders}:log"), None);
        assert_eq!(keys.topic_of_log("broker:{t:orders}:next"), None);
        assert_eq!(keys.topic_all(&t).len(), 7);
        assert!(keys
            .topic_all(&t)
            .iter()
            .all(|k| k.starts_with("broker:{t:orders.eu-1}:")));
    }
}
