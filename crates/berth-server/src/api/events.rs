//! `/v2/events`: Server-Sent Events in Marathon's framing, `event_stream_attached` first,
//! optionally filtered by `event_type`.

use super::Params;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use axum::extract::{ConnectInfo, State};
use axum::http::Uri;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::event::{Event, KNOWN_EVENT_TYPES};
use futures::StreamExt;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

fn frame(e: &Event) -> SseEvent {
    SseEvent::default()
        .event(e.event_type.clone())
        .data(&*e.json)
}

pub async fn stream(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    uri: Uri,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let filter: Vec<String> = p.all("event_type");
    for f in &filter {
        if !KNOWN_EVENT_TYPES.contains(&f.as_str()) {
            return Err(ApiError::BadRequest(format!("unknown event_type '{f}'")));
        }
    }
    let sub = s
        .events
        .subscribe()
        .map_err(|e| ApiError::TooManyRequests(e.to_string()))?;
    let attached = Event::new(
        "event_stream_attached",
        json!({"remoteAddress": addr.0.ip().to_string()}),
    );
    let first = if filter.is_empty() || filter.iter().any(|f| f == "event_stream_attached") {
        Some(Ok::<_, Infallible>(frame(&attached)))
    } else {
        None
    };
    // Ends when the hub drops a subscriber too far behind: the client reconnects, as
    // Marathon clients do after any disconnect, instead of the server buffering for it.
    let live = futures::stream::unfold(sub, |mut sub| async move {
        let e = sub.recv().await?;
        Some((e, sub))
    })
    .filter_map(move |e| {
        let out =
            (filter.is_empty() || filter.iter().any(|f| *f == e.event_type)).then(|| Ok(frame(&e)));
        futures::future::ready(out)
    });
    let stream = futures::stream::iter(first).chain(live);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
