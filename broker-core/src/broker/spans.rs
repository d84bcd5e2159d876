//! Where the broker's spans go ([`Spans`]), and the publish span.

use std::time::SystemTime;

use super::Broker;
use crate::{Message, SpanKind, SpanRecord, SpanValue, Spans, TraceContext};

impl Broker {
    /// The same broker, reporting its spans to `spans`: a publish span
    /// for every message, and (through the delivery side's
    /// [`Broker::span`]) one per attempt. Every message then joins a
    /// trace: the publisher's (`traceparent`), or a new one.
    ///
    /// # Panics
    ///
    /// When the broker reports its spans somewhere already: it is set
    /// once, as the broker is made.
    #[must_use]
    pub fn with_spans(self, spans: impl Spans) -> Self {
        if self.shared.spans.set(Box::new(spans)).is_err() {
            panic!("the broker reports its spans somewhere already");
        }
        self
    }

    /// Whether spans are reported.
    pub fn is_tracing(&self) -> bool {
        self.shared.spans.get().is_some()
    }

    /// Reports `span`, if spans are reported; never waits.
    pub fn span(&self, span: SpanRecord) {
        if let Some(spans) = self.shared.spans.get() {
            spans.record(span);
        }
    }

    /// The trace context a message published with `given` keeps: its
    /// publish span, a child of the publisher's; a new trace when spans
    /// are reported and the publisher gave none.
    pub(super) fn publish_context(&self, given: Option<&TraceContext>) -> Option<TraceContext> {
        match given {
            Some(parent) => Some(parent.child()),
            None if self.is_tracing() => Some(TraceContext::new_root()),
            None => None,
        }
    }

    /// Reports the publish span of `message` (published with the trace
    /// context `given`), from `start` to now.
    pub(super) fn publish_span(
        &self,
        message: &Message,
        given: Option<&TraceContext>,
        start: SystemTime,
    ) {
        let Some(spans) = self.shared.spans.get() else {
            return;
        };
        let Some(trace) = message.trace() else {
            return;
        };
        spans.record(SpanRecord {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_span_id: given.map_or([0; 8], |g| g.span_id),
            name: "publish",
            kind: SpanKind::Producer,
            start,
            end: SystemTime::now(),
            ok: true,
            attributes: vec![
                (
                    "messaging.destination.name",
                    SpanValue::Str(message.topic().to_string()),
                ),
                (
                    "messaging.message.id",
                    SpanValue::Str(message.id().to_owned()),
                ),
                (
                    "broker.offset",
                    SpanValue::Int(i64::try_from(message.offset()).unwrap_or(i64::MAX)),
                ),
            ],
        });
    }
}
