//! Which incarnation of each topic's log this process writes to.
//!
//! A log's incarnation is its message id prefix (`…:prefix`), made when
//! its topic is first registered and deleted with it. This process learns
//! it with the topic: when it loads the registrations, saves a
//! registration, reads one another replica announced, or first appends.
//! Every append names the incarnation it learned, and the APPEND script
//! refuses a log whose prefix is gone or another. So a publish that
//! another replica's deletion overtook (its topic still in this replica's
//! registry, the deletion's announcement on its way) never makes the log
//! again, and never lands in a topic made again under the same name.
//!
//! A deletion leaves a tombstone here (`Gone`), so that an append in that
//! window is refused rather than taken as a first append that may make
//! the log. Tombstones only matter until the registry has taken the
//! deletion (milliseconds), so the oldest go first past [`MAX_GONE`].
//!
//! One `parking_lot` read-write lock (every append reads it), held for a
//! map operation and never across an await.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use broker_core::TopicName;
use parking_lot::RwLock;

/// Topics whose incarnation is kept at most; the broker keeps far fewer
/// topics (`Limits::max_topics`, 10,000 by default). Past it a topic is
/// not remembered, and its appends are first appends.
pub(crate) const MAX_TOPICS: usize = 1 << 20;

/// Tombstones kept at most (the oldest go first).
pub(crate) const MAX_GONE: usize = 1 << 16;

/// What this process knows of a topic's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known {
    /// Its incarnation: the prefix appends must find.
    Live(Arc<str>),
    /// Deleted since this process learned it.
    Gone,
}

#[derive(Default)]
pub(crate) struct Incarnations {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<TopicName, Known>,
    /// Tombstones, oldest first.
    gone: VecDeque<TopicName>,
}

impl Incarnations {
    /// What is known of `topic`; `None`: nothing (never learned).
    pub(crate) fn get(&self, topic: &TopicName) -> Option<Known> {
        self.inner.read().topics.get(topic).cloned()
    }

    /// `topic`'s log is `prefix`.
    pub(crate) fn learn(&self, topic: &TopicName, prefix: &str) {
        let mut inner = self.inner.write();
        if inner.topics.len() >= MAX_TOPICS && !inner.topics.contains_key(topic) {
            return;
        }
        inner
            .topics
            .insert(topic.clone(), Known::Live(Arc::from(prefix)));
    }

    /// `topic` was deleted.
    pub(crate) fn gone(&self, topic: &TopicName) {
        let mut inner = self.inner.write();
        inner.bury(topic.clone());
    }

    /// After a load: the topics loaded and their incarnations (`None`: a
    /// topic registered but given none, by an older version or because it
    /// was just deleted; it keeps what is known, a tombstone included).
    /// One known whose log is gone since stays until an append finds out.
    pub(crate) fn reload(&self, loaded: Vec<(TopicName, Option<String>)>) {
        for (topic, prefix) in loaded {
            if let Some(prefix) = prefix {
                self.learn(&topic, &prefix);
            }
        }
    }
}

impl Inner {
    fn bury(&mut self, topic: TopicName) {
        if self.topics.insert(topic.clone(), Known::Gone) == Some(Known::Gone) {
            return;
        }
        self.gone.push_back(topic);
        while self.gone.len() > MAX_GONE {
            if let Some(old) = self.gone.pop_front() {
                if self.topics.get(&old) == Some(&Known::Gone) {
                    self.topics.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TopicName {
        TopicName::new(name).unwrap()
    }

    #[test]
    fn learned_gone_and_learned_again() {
        let known = Incarnations::default();
        assert_eq!(known.get(&t("a")), None);
        known.learn(&t("a"), "p1");
        assert_eq!(known.get(&t("a")), Some(Known::Live("p1".into())));
        known.gone(&t("a"));
        assert_eq!(known.get(&t("a")), Some(Known::Gone));
        known.learn(&t("a"), "p2");
        assert_eq!(known.get(&t("a")), Some(Known::Live("p2".into())));
    }

    #[test]
    fn a_reload_learns_what_it_finds_and_keeps_tombstones() {
        let known = Incarnations::default();
        known.learn(&t("kept"), "p1");
        known.learn(&t("moved"), "p2");
        known.gone(&t("buried"));
        known.reload(vec![
            (t("buried"), None),
            (t("kept"), Some("p1".to_owned())),
            (t("moved"), Some("p3".to_owned())),
            (t("old"), None),
        ]);
        assert_eq!(known.get(&t("kept")), Some(Known::Live("p1".into())));
        assert_eq!(known.get(&t("moved")), Some(Known::Live("p3".into())));
        assert_eq!(known.get(&t("buried")), Some(Known::Gone));
        assert_eq!(known.get(&t("old")), None);
    }

    #[test]
    fn tombstones_are_bounded_oldest_first() {
        let known = Incarnations::default();
        for i in 0..MAX_GONE + 10 {
            known.gone(&t(&format!("t{i}")));
        }
        assert_eq!(known.get(&t("t0")), None);
        assert_eq!(known.get(&t("t9")), None);
        assert_eq!(known.get(&t("t10")), Some(Known::Gone));
        let inner = known.inner.read();
        assert_eq!(inner.topics.len(), MAX_GONE);
        assert_eq!(inner.gone.len(), MAX_GONE);
    }
}
