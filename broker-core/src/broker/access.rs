//! Who may publish and listen: publisher and listener credentials, and
//! the verifier of tokens the registry did not issue.

use std::sync::Arc;

use super::{records::credential_record, Broker};
use crate::{
    stats::Registration, store::Change, Credential, Error, Grants, Listener, Publisher, Role,
    TokenVerifier,
};

impl Broker {
    /// Registers a publisher named `name` on `topic`, creating the topic if
    /// needed. Replaying the same (topic, name) returns the same publisher
    /// and token with `created == false`. Answers once the registration is
    /// in the store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidPublisherName`],
    /// [`Error::LimitExceeded`], or [`Error::Storage`].
    pub async fn register_publisher(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Publisher>>, Error> {
        self.register_credential(Role::Publish, topic, name).await
    }

    /// Registers a listener named `name` on `topic`, creating the topic if
    /// needed: its token lets a live client (Server-Sent Events, WebSocket)
    /// receive the topic's messages. Replaying the same (topic, name)
    /// returns the same listener and token with `created == false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidListenerName`],
    /// [`Error::LimitExceeded`], or [`Error::Storage`].
    pub async fn register_listener(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Listener>>, Error> {
        self.register_credential(Role::Listen, topic, name).await
    }

    async fn register_credential(
        &self,
        role: Role,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Credential>>, Error> {
        if role == Role::Publish && topic == crate::EVENTS_TOPIC {
            return Err(Error::ReservedTopic);
        }
        let _order = self.shared.changes.lock().await;
        let plan =
            self.shared
                .registry
                .write()
                .plan_credential(role, topic, name, &self.shared.limits)?;
        if !plan.created {
            return Ok(plan);
        }
        let c = &plan.item;
        let record = credential_record(c, self.next_order());
        let adopted = self
            .save_or_adopt(topic, &record, |registry| {
                registry.plan_credential(role, topic, name, &self.shared.limits)
            })
            .await?;
        if let Some(adopted) = adopted {
            return Ok(adopted);
        }
        self.shared.registry.write().insert_credential(c.clone());
        Ok(plan)
    }

    /// Deregisters a publisher: its token stops working at once. Nothing
    /// else on the topic changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::PublisherNotFound`] when no
    /// publisher with that id is on the topic, or [`Error::Storage`].
    pub async fn deregister_publisher(&self, topic: &str, id: &str) -> Result<(), Error> {
        self.deregister_credential(Role::Publish, topic, id).await
    }

    /// Deregisters a listener: its token stops working for new
    /// connections at once. Nothing else on the topic changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::ListenerNotFound`], or
    /// [`Error::Storage`].
    pub async fn deregister_listener(&self, topic: &str, id: &str) -> Result<(), Error> {
        self.deregister_credential(Role::Listen, topic, id).await
    }

    async fn deregister_credential(&self, role: Role, topic: &str, id: &str) -> Result<(), Error> {
        let _order = self.shared.changes.lock().await;
        self.shared
            .registry
            .read()
            .find_credential(role, topic, id)?;
        self.shared.store.save(Change::Remove { id }).await?;
        self.shared.registry.write().remove_credential(id);
        Ok(())
    }

    /// Checks that `token` is a listener token of `topic`, or a verified
    /// token ([`Broker::verify_token`]) whose [`Grants`] may listen there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`]; [`Error::Unauthorized`] when the token is
    /// not a registered listener's; [`Error::Forbidden`] when it is another
    /// topic's; [`Error::InvalidToken`] when the verifier refuses it;
    /// [`Error::InsufficientScope`] when its grants do not cover `topic`.
    pub fn authorize_listener(&self, topic: &str, token: &str) -> Result<(), Error> {
        crate::topic::validate(topic)?;
        if let Some(grants) = self.verify_token(token)? {
            return if grants.may_listen(topic) {
                Ok(())
            } else {
                Err(Error::InsufficientScope {
                    needed: format!("listen:{topic}"),
                })
            };
        }
        let registry = self.shared.registry.read();
        let listener = registry.authenticate(token, Role::Listen)?;
        if listener.topic.as_str() == topic {
            Ok(())
        } else {
            Err(Error::Forbidden)
        }
    }

    /// Whether `token` is a credential of this broker at all: a registered
    /// publisher's or listener's (of any topic), or a JWT the verifier
    /// accepts (with any scope). What a WebSocket handshake asks before it
    /// upgrades, so that only a client holding a credential holds a
    /// connection. With replicas, a token another replica issued a moment
    /// ago is learnt first.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthorized`]; [`Error::InvalidToken`] when the verifier
    /// refuses it.
    pub async fn recognize(&self, token: &str) -> Result<(), Error> {
        let known = |b: &Broker| -> Result<(), Error> {
            if b.verify_token(token)?.is_some() {
                return Ok(());
            }
            let registry = b.shared.registry.read();
            registry
                .authenticate(token, Role::Publish)
                .or_else(|_| registry.authenticate(token, Role::Listen))
                .map(|_| ())
        };
        match known(self) {
            Err(Error::Unauthorized) if self.learn_token(token).await => known(self),
            result => result,
        }
    }

    /// Sets the verifier of tokens the registry did not issue (JWTs):
    /// from now on a [JWT-shaped](crate::is_jwt_shaped) token presented to
    /// publish or listen goes to it. Without one, such a token is simply
    /// not a registered one ([`Error::Unauthorized`]).
    ///
    /// # Panics
    ///
    /// When the broker has a verifier already: it is set once, as the
    /// broker is made.
    #[must_use]
    pub fn with_token_verifier(self, verifier: impl TokenVerifier) -> Self {
        if self.shared.verifier.set(Box::new(verifier)).is_err() {
            panic!("the broker has a token verifier already");
        }
        self
    }

    /// Whether a token verifier is set.
    pub fn has_token_verifier(&self) -> bool {
        self.shared.verifier.get().is_some()
    }

    /// What a token the registry did not issue may do: `Some` with its
    /// [`Grants`] when `token` is [JWT-shaped](crate::is_jwt_shaped) and a
    /// verifier is set; `None` for any other token (a registry token, the
    /// admin token), which the caller checks its own way.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] with the verifier's reason.
    pub fn verify_token(&self, token: &str) -> Result<Option<Grants>, Error> {
        match self.shared.verifier.get() {
            Some(verifier) if crate::is_jwt_shaped(token) => {
                if token.len() > crate::MAX_JWT_LEN {
                    return Err(Error::InvalidToken {
                        reason: crate::TokenRejection::Malformed,
                    });
                }
                verifier
                    .verify(token)
                    .map(Some)
                    .map_err(|reason| Error::InvalidToken { reason })
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::test_support::{broker, endpoint, Recorder};
    use crate::Limits;

    #[tokio::test]
    async fn publisher_registration_is_idempotent_per_topic_and_name() {
        let (b, _) = broker();
        let first = b.register_publisher("t", "checkout").await.unwrap();
        let again = b.register_publisher("t", "checkout").await.unwrap();
        assert!(first.created);
        assert!(!again.created);
        assert_eq!(first.item.id(), again.item.id());
        assert_eq!(first.item.token(), again.item.token());
        let other = b.register_publisher("t", "billing").await.unwrap();
        assert!(other.created);
        assert_ne!(other.item.id(), first.item.id());
        let elsewhere = b.register_publisher("u", "checkout").await.unwrap();
        assert!(elsewhere.created);
        assert_ne!(elsewhere.item.token(), first.item.token());
    }

    #[tokio::test]
    async fn limits_are_enforced_without_side_effects() {
        let limits = Limits {
            max_topics: 1,
            max_publishers_per_topic: 1,
            max_subscribers_per_topic: 1,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        b.register_publisher("t", "a").await.unwrap();
        assert!(matches!(
            b.register_publisher("t", "b").await,
            Err(Error::LimitExceeded { limit: 1, .. })
        ));
        assert!(matches!(
            b.register_publisher("u", "a").await,
            Err(Error::LimitExceeded { what: "topics", .. })
        ));
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap();
        assert!(b
            .register_subscriber("t", endpoint(&b, "http://h/2"))
            .await
            .is_err());
        // Replays still succeed at the limit.
        assert!(!b.register_publisher("t", "a").await.unwrap().created);
        assert!(
            !b.register_subscriber("t", endpoint(&b, "http://h/1"))
                .await
                .unwrap()
                .created
        );
        assert_eq!(b.topics().len(), 1);
    }

    #[tokio::test]
    async fn publisher_names_are_validated() {
        let (b, _) = broker();
        for bad in ["", "a\nb", &"n".repeat(129)] {
            assert!(matches!(
                b.register_publisher("t", bad).await,
                Err(Error::InvalidPublisherName { .. })
            ));
        }
        assert!(b.topics().is_empty());
    }

    /// A verifier that takes `a.<name>.ok`, with the scope its name
    /// stands for, and refuses every other JWT-shaped token as expired.
    struct Scoped;

    impl TokenVerifier for Scoped {
        fn verify(&self, token: &str) -> Result<Grants, crate::TokenRejection> {
            let scope = match token {
                "a.publisher.ok" => "publish:t listen:u*",
                "a.anywhere.ok" => "publish:*",
                "a.admin.ok" => "admin",
                _ => return Err(crate::TokenRejection::Expired),
            };
            Ok(Grants::from_scope(scope))
        }
    }

    #[tokio::test]
    async fn verified_tokens_publish_and_listen_as_their_scope_says() {
        let recorder = Arc::new(Recorder::default());
        let b = Broker::new(recorder.clone()).with_token_verifier(Scoped);
        assert!(b.has_token_verifier());
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap();
        let p = b.register_publisher("t", "p").await.unwrap().item;
        let l = b.register_listener("t", "l").await.unwrap().item;

        let publisher = "a.publisher.ok";
        let r = b.publish("t", publisher, None, "x".into()).await.unwrap();
        assert_eq!((r.offset, r.subscribers), (0, 1));
        assert_eq!(recorder.0.lock().len(), 1);
        let batch = vec![
            crate::Draft::new(None, "y".into()),
            crate::Draft::new(None, "z".into()),
        ];
        let r = b.publish_batch("t", publisher, batch).await.unwrap();
        assert_eq!(r.messages.len(), 2);
        // Scope, not registration: another topic is refused by name...
        b.register_subscriber("v", endpoint(&b, "http://h/2"))
            .await
            .unwrap();
        assert_eq!(
            b.publish("v", publisher, None, "x".into())
                .await
                .unwrap_err(),
            Error::InsufficientScope {
                needed: "publish:v".into()
            }
        );
        // ...and a covered topic nothing made yet has no log to take it.
        let anywhere = "a.anywhere.ok";
        assert_eq!(
            b.publish("nothing", anywhere, None, "x".into())
                .await
                .unwrap_err(),
            Error::TopicNotFound
        );
        assert_eq!(
            b.publish("t", "a.b.expired", None, "x".into())
                .await
                .unwrap_err(),
            Error::InvalidToken {
                reason: crate::TokenRejection::Expired
            }
        );

        assert_eq!(b.authorize_listener("u.1", publisher), Ok(()));
        assert_eq!(
            b.authorize_listener("t", publisher),
            Err(Error::InsufficientScope {
                needed: "listen:t".into()
            })
        );
        assert_eq!(b.authorize_listener("anything", "a.admin.ok"), Ok(()));
        // `admin` does not publish, as the admin token does not.
        assert!(matches!(
            b.publish("t", "a.admin.ok", None, "x".into()).await,
            Err(Error::InsufficientScope { .. })
        ));
        assert_eq!(
            b.verify_token("a.admin.ok").unwrap(),
            Some(Grants::from_scope("admin"))
        );
        let long = format!("a.{}.ok", "b".repeat(crate::MAX_JWT_LEN));
        assert_eq!(
            b.verify_token(&long),
            Err(Error::InvalidToken {
                reason: crate::TokenRejection::Malformed
            })
        );

        // Registered tokens work beside it, and never reach it.
        assert_eq!(b.verify_token(p.token().expose()), Ok(None));
        b.publish("t", p.token().expose(), None, "x".into())
            .await
            .unwrap();
        assert_eq!(b.authorize_listener("t", l.token().expose()), Ok(()));
        assert_eq!(
            b.authorize_listener("t", "a.b"),
            Err(Error::Unauthorized),
            "not JWT-shaped: the registry's to refuse"
        );
    }

    #[tokio::test]
    async fn without_a_verifier_a_jwt_is_just_an_unknown_token() {
        let (b, _) = broker();
        b.register_publisher("t", "p").await.unwrap();
        assert!(!b.has_token_verifier());
        assert_eq!(b.verify_token("a.admin.ok"), Ok(None));
        let r = b.publish("t", "a.publisher.ok", None, "x".into()).await;
        assert_eq!(r.unwrap_err(), Error::Unauthorized);
    }

    #[test]
    #[should_panic(expected = "a token verifier already")]
    fn a_verifier_is_set_once() {
        let (b, _) = broker();
        let _ = b.with_token_verifier(Scoped).with_token_verifier(Scoped);
    }

    #[tokio::test]
    async fn listener_tokens_listen_and_never_publish() {
        let (b, _) = broker();
        let l = b.register_listener("t", "dashboard").await.unwrap();
        assert!(l.created && l.item.id().starts_with("lis_"));
        assert!(!b.register_listener("t", "dashboard").await.unwrap().created);
        let p = b.register_publisher("t", "p").await.unwrap().item;
        let token = l.item.token().expose();
        assert_eq!(b.authorize_listener("t", token), Ok(()));
        // A listener token is not a publisher's, and the reverse.
        let publish = b.publish("t", token, None, "x".into()).await;
        assert_eq!(publish.unwrap_err(), Error::Unauthorized);
        assert_eq!(
            b.authorize_listener("t", p.token().expose()),
            Err(Error::Unauthorized)
        );
        b.register_publisher("u", "p").await.unwrap();
        assert_eq!(b.authorize_listener("u", token), Err(Error::Forbidden));
        let detail = b.topic("t").unwrap();
        assert_eq!(detail.listeners.len(), 1);
        assert_eq!(b.topics()[0].listeners, 1);
        // Deregistering a listener by a publisher's id, or the reverse, finds nothing.
        assert_eq!(
            b.deregister_listener("t", p.id()).await,
            Err(Error::ListenerNotFound)
        );
        assert_eq!(
            b.deregister_publisher("t", l.item.id()).await,
            Err(Error::PublisherNotFound)
        );
        b.deregister_listener("t", l.item.id()).await.unwrap();
        assert_eq!(b.authorize_listener("t", token), Err(Error::Unauthorized));
        // A listener alone keeps a topic.
        b.register_listener("v", "x").await.unwrap();
        assert!(b.topic("v").is_ok());
    }
}
