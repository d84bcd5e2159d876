//! Spans: what the broker reports of a traced message's life (its
//! publish, each delivery attempt) to a [`Spans`] sink, such as the
//! OTLP exporter of `broker-otel`. Recording never waits: a sink takes
//! a span or drops it.

use std::time::SystemTime;

/// What a span's operation is, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A publish: the broker took a message for others.
    Producer,
    /// A delivery attempt: the broker called an endpoint.
    Client,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanValue {
    /// A string.
    Str(String),
    /// A whole number.
    Int(i64),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its own id.
    pub span_id: [u8; 8],
    /// Its parent's id (all zero for a root span).
    pub parent_span_id: [u8; 8],
    /// Its name: `publish` or `deliver` (the topic is an attribute,
    /// `messaging.destination.name`, as OpenTelemetry's messaging
    /// conventions allow).
    pub name: &'static str,
    /// What it did.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Whether it went well (a failed attempt: not).
    pub ok: bool,
    /// Its attributes.
    pub attributes: Vec<(&'static str, SpanValue)>,
}

/// Where finished spans go. Shaped like a `Service`'s sink: `&self`,
/// never blocking, never failing its caller.
pub trait Spans: Send + Sync + 'static {
    /// Takes `span`, or drops it (and counts the drop) when it cannot.
    fn record(&self, span: SpanRecord);
}
