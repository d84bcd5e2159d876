//! Consumer groups: pulls that lease messages, acks, and the group's dead
//! letters; with replicas sharing the store, under the group's lock.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use super::{
    records::{group_progress, group_record},
    Broker,
};
use crate::{
    stats::{Registration, TopicStats, Waiting},
    store::{Change, DeadLetter, Record},
    Error, Group, GroupConfig, GroupStart, Pulled,
};

/// How long a replica may hold a consumer group's lock (a pull or an ack
/// takes it for a few store round trips).
const GROUP_LOCK_TTL: Duration = Duration::from_secs(5);

impl Broker {
    /// Creates consumer group `name` on `topic` (creating the topic if
    /// needed), starting at `start`; replaying an existing name returns it
    /// as it is, with `created == false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidGroup`],
    /// [`Error::LimitExceeded`], or [`Error::Storage`].
    pub async fn create_group(
        &self,
        topic: &str,
        name: &str,
        config: GroupConfig,
        start: GroupStart,
    ) -> Result<Registration<Arc<Group>>, Error> {
        crate::topic::validate(topic)?;
        if !crate::group::valid_name(name) {
            return Err(Error::InvalidGroup {
                reason: "a group name is 1-128 characters of [A-Za-z0-9._-]",
            });
        }
        if config.ack_timeout.is_zero() || config.ack_timeout > Duration::from_secs(12 * 3600) {
            return Err(Error::InvalidGroup {
                reason: "ack_timeout must be more than 0 and at most 12h",
            });
        }
        if !(1..=1_000).contains(&config.max_deliveries) {
            return Err(Error::InvalidGroup {
                reason: "max_deliveries must be 1 to 1000",
            });
        }
        let _order = self.shared.changes.lock().await;
        let (name_t, stats) = {
            let mut registry = self.shared.registry.write();
            let t = registry.topic_entry(topic, &self.shared.limits)?;
            if let Some(existing) = t.groups.get(name) {
                return Ok(Registration {
                    item: existing.clone(),
                    created: false,
                });
            }
            (t.name.clone(), t.stats.clone())
        };
        let (first, end) = self.shared.store.bounds(&name_t).await?;
        let end = end.max(stats.log_end.load(Ordering::Acquire));
        let floor = match start {
            GroupStart::Earliest => first,
            GroupStart::Latest => end,
        };
        let group = Arc::new(Group {
            id: Group::id_of(topic, name),
            topic: name_t,
            name: name.to_owned(),
            config,
            order: self.next_order(),
            state: parking_lot::Mutex::new(crate::group::GroupState {
                floor,
                next: floor,
                ..Default::default()
            }),
            returned: tokio::sync::Notify::new(),
            persist: tokio::sync::Mutex::new(()),
            filtered: Default::default(),
        });
        let record = group_record(&group, self.shared.cluster.is_some());
        self.durably(topic, Change::Put(&record)).await?;
        let mut registry = self.shared.registry.write();
        registry
            .topic_or_create(&group.topic)
            .groups
            .insert(name.to_owned(), group.clone());
        Ok(Registration::created(group))
    }

    fn group(&self, topic: &str, name: &str) -> Result<(Arc<Group>, Arc<TopicStats>), Error> {
        crate::topic::validate(topic)?;
        let registry = self.shared.registry.read();
        let t = registry.topics.get(topic).ok_or(Error::GroupNotFound)?;
        let group = t.groups.get(name).ok_or(Error::GroupNotFound)?;
        Ok((group.clone(), t.stats.clone()))
    }

    /// Deletes consumer group `name`: its progress, leases and dead
    /// letters go.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn delete_group(&self, topic: &str, name: &str) -> Result<(), Error> {
        let _order = self.shared.changes.lock().await;
        let (group, _) = self.group(topic, name)?;
        self.shared
            .store
            .save(Change::Remove { id: &group.id })
            .await?;
        let mut registry = self.shared.registry.write();
        if let Some(t) = registry.topics.get_mut(topic) {
            t.groups.remove(name);
        }
        registry.prune(topic);
        Ok(())
    }

    /// Leases up to `max` messages of group `name` to the caller: those
    /// whose lease expired first, then new ones in offset order. Each
    /// comes with a receipt to [`ack`](Broker::ack) within the group's
    /// `ack_timeout`; not acked, it is delivered again, and after
    /// `max_deliveries` it goes to the group's dead letters. When there is
    /// nothing to lease, waits up to `wait` for a publish or a lease to
    /// come back.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn pull(
        &self,
        topic: &str,
        name: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Pulled>, Error> {
        let (group, stats) = self.group(topic, name)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let shared = self.share_group(&group).await?;
            let now = tokio::time::Instant::now();
            let (dead, leased) = {
                let mut state = group.state.lock();
                let dead = state.expire(now, group.config.max_deliveries);
                let end = stats.log_end.load(Ordering::Acquire);
                let leased = state.lease(max, end, now, group.config.ack_timeout);
                (dead, leased)
            };
            let kept = async {
                if !dead.is_empty() {
                    self.group_dead(&group, &dead).await
                } else if shared.is_some() && !leased.is_empty() {
                    // The other replicas must see the leases.
                    self.persist_group(&group).await
                } else {
                    Ok(())
                }
            }
            .await;
            self.unshare_group(&group, shared).await;
            kept?;
            let pulled = self.read_leased(&group, leased).await?;
            if !pulled.is_empty() || now >= deadline {
                return Ok(pulled);
            }
            // Nothing: wait for a publish, a lease given back or expiring,
            // or the deadline.
            let expiry = group.state.lock().next_expiry();
            let until = expiry.map_or(deadline, |e| e.min(deadline));
            let _waiting = Waiting::on(&stats);
            let appended = stats.appended.notified();
            let returned = group.returned.notified();
            tokio::pin!(appended, returned);
            appended.as_mut().enable();
            returned.as_mut().enable();
            // Checked after the waits are enabled: a publish or a lease
            // given back since the lease above is not missed.
            let end = stats.log_end.load(Ordering::SeqCst);
            let idle = {
                let state = group.state.lock();
                state.ready.is_empty()
                    && state.next >= end.min(state.floor.saturating_add(crate::MAX_WINDOW))
            };
            if idle {
                tokio::select! {
                    _ = appended => {}
                    _ = returned => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }

    /// Reads the leased messages from the log; those retention removed are
    /// done with (nothing to deliver).
    async fn read_leased(
        &self,
        group: &Group,
        leased: Vec<crate::group::Leased>,
    ) -> Result<Vec<Pulled>, Error> {
        let mut pulled = Vec::with_capacity(leased.len());
        let mut i = 0;
        while i < leased.len() {
            // A run of consecutive offsets is one read.
            let start = leased[i].offset;
            let mut j = i + 1;
            while j < leased.len() && leased[j].offset == leased[j - 1].offset + 1 {
                j += 1;
            }
            let read = self
                .shared
                .store
                .read(&group.topic, start, j - i, usize::MAX)
                .await?;
            let mut messages = read.messages.into_iter().peekable();
            for lease in &leased[i..j] {
                while messages.next_if(|m| m.offset < lease.offset).is_some() {}
                match messages.next_if(|m| m.offset == lease.offset) {
                    // Skipped by the group's filter: done with for it.
                    Some(message)
                        if !group
                            .config
                            .filter
                            .as_ref()
                            .is_none_or(|f| f.matches(&message)) =>
                    {
                        let mut state = group.state.lock();
                        state.leases.remove(&lease.offset);
                        state.finish(lease.offset);
                        group.filtered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(message) => pulled.push(Pulled {
                        message,
                        receipt: crate::group::receipt(lease.offset, lease.nonce),
                        deliveries: lease.deliveries,
                    }),
                    None => {
                        // Gone with retention: nothing to deliver.
                        let mut state = group.state.lock();
                        state.leases.remove(&lease.offset);
                        state.finish(lease.offset);
                    }
                }
            }
            i = j;
        }
        Ok(pulled)
    }

    /// Keeps the dead letters of messages whose deliveries ran out, then
    /// the group's progress.
    async fn group_dead(&self, group: &Group, dead: &[(u64, u32)]) -> Result<(), Error> {
        for &(offset, deliveries) in dead {
            let read = self.shared.store.read(&group.topic, offset, 1, 0).await?;
            let Some(message) = read.messages.into_iter().find(|m| m.offset == offset) else {
                continue; // gone with retention
            };
            let letter = DeadLetter {
                message_id: message.id.clone(),
                offset,
                attempts: deliveries,
                last_status: None,
                last_error: "not acked within the group's ack_timeout".to_owned(),
                failed_at: SystemTime::now(),
            };
            self.shared
                .store
                .put_dead_letter(&group.id, &letter, self.shared.limits.max_dead_letters)
                .await?;
        }
        self.persist_group(group).await
    }

    /// Writes the group's progress ([`Progress::save_group`]: not a
    /// registration change, so never announced to other replicas), in
    /// order: each write holds at least what the one before held.
    async fn persist_group(&self, group: &Group) -> Result<(), Error> {
        let _ordered = group.persist.lock().await;
        let record = group_progress(group, self.shared.cluster.is_some());
        self.shared.store.save_group(record).await
    }

    /// Acks pulled messages by their receipts: each is done, never
    /// delivered again (with a data dir, once this returns). Returns
    /// `(acked, stale)`: stale receipts (unknown, expired, already acked)
    /// are counted, not refused.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn ack(
        &self,
        topic: &str,
        name: &str,
        receipts: &[String],
    ) -> Result<(usize, usize), Error> {
        let (group, _) = self.group(topic, name)?;
        let shared = self.share_group(&group).await?;
        let acked = self.ack_shared(&group, receipts).await;
        self.unshare_group(&group, shared).await;
        let acked = acked?;
        if acked > 0 {
            group.returned.notify_waiters();
        }
        Ok((acked, receipts.len() - acked))
    }

    /// Acks what `receipts` still lease, and keeps the progress.
    async fn ack_shared(&self, group: &Group, receipts: &[String]) -> Result<usize, Error> {
        let now = tokio::time::Instant::now();
        let mut acked = 0;
        let mut undead = Vec::new();
        {
            let mut state = group.state.lock();
            for receipt in receipts {
                let Some((offset, nonce)) = crate::group::parse_receipt(receipt) else {
                    continue;
                };
                let live = state
                    .leases
                    .get(&offset)
                    .is_some_and(|l| l.nonce == nonce && l.until > now);
                if !live {
                    continue;
                }
                state.leases.remove(&offset);
                if state.redriven.contains(&offset) {
                    undead.push(offset);
                }
                state.finish(offset);
                acked += 1;
            }
        }
        if acked > 0 {
            self.persist_group(group).await?;
        }
        for offset in undead {
            self.shared
                .store
                .remove_dead_letter(&group.id, offset)
                .await?;
        }
        Ok(acked)
    }

    /// With replicas sharing the store: takes `group`'s lock and its state
    /// as stored, so this replica's change starts from the others'. `None`
    /// (nothing taken) without.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`]; [`Error::GroupNotFound`] when another replica
    /// deleted it.
    async fn share_group(&self, group: &Group) -> Result<Option<String>, Error> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(None);
        };
        let token = cluster.lock(&group.id, GROUP_LOCK_TTL).await?;
        let stored = match cluster.record(&group.id).await {
            Ok(Some(Record::Group(g))) => Ok(g),
            Ok(_) => Err(Error::GroupNotFound),
            Err(e) => Err(e),
        };
        match stored {
            Ok(g) => {
                *group.state.lock() = crate::group::GroupState::of_record(&g);
                Ok(Some(token))
            }
            Err(e) => {
                self.unshare_group(group, Some(token)).await;
                Err(e)
            }
        }
    }

    /// Gives back the lock [`share_group`](Self::share_group) took.
    async fn unshare_group(&self, group: &Group, token: Option<String>) {
        if let (Some(cluster), Some(token)) = (&self.shared.cluster, token) {
            if let Err(error) = cluster.unlock(&group.id, &token).await {
                tracing::warn!(group = %group.id, %error, "unlocking a group failed; it expires");
            }
        }
    }

    /// Group `name`'s dead letters, oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn group_dead_letters(
        &self,
        topic: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let (group, _) = self.group(topic, name)?;
        self.expire_group(&group).await?;
        self.shared.store.dead_letters(&group.id, limit).await
    }

    /// Takes back the group's leases that expired, making dead letters of
    /// those whose deliveries are spent: a listing shows them without
    /// waiting for someone to pull again.
    async fn expire_group(&self, group: &Group) -> Result<(), Error> {
        let due = group
            .state
            .lock()
            .next_expiry()
            .is_some_and(|at| at <= tokio::time::Instant::now());
        if !due {
            return Ok(());
        }
        let shared = self.share_group(group).await?;
        let dead = group
            .state
            .lock()
            .expire(tokio::time::Instant::now(), group.config.max_deliveries);
        let kept = if dead.is_empty() {
            Ok(())
        } else {
            self.group_dead(group, &dead).await
        };
        self.unshare_group(group, shared).await;
        kept
    }

    /// Puts group `name`'s dead letters (all, or those with the given
    /// message ids) up for pulling again, with fresh deliveries; each
    /// leaves the list once acked. Returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn redrive_group(
        &self,
        topic: &str,
        name: &str,
        message_ids: Option<&[String]>,
    ) -> Result<usize, Error> {
        let (group, _) = self.group(topic, name)?;
        let mut dead = self
            .shared
            .store
            .dead_letters(&group.id, usize::MAX)
            .await?;
        if let Some(ids) = message_ids {
            dead.retain(|d| ids.contains(&d.message_id));
        }
        let shared = self.share_group(&group).await?;
        {
            let mut state = group.state.lock();
            for d in &dead {
                if state.leases.contains_key(&d.offset) {
                    continue;
                }
                state.redriven.insert(d.offset);
                state.deliveries.insert(d.offset, 0);
                state.ready.insert(d.offset);
            }
        }
        let kept = match shared {
            Some(_) => self.persist_group(&group).await,
            None => Ok(()),
        };
        self.unshare_group(&group, shared).await;
        kept?;
        group.returned.notify_waiters();
        Ok(dead.len())
    }
}
