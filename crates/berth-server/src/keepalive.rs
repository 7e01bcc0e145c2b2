//! Honest keep-alive. When a handler answers without reading the request body to its end (an
//! error found before the body was needed: a bad query parameter, a 404, a 405), hyper closes
//! the connection after the reply, since the rest of the body is still in the way, but the
//! reply has already gone out without saying so. A keep-alive client (Python's `requests`,
//! reqwest's pool) then sends its next request on a dead connection and gets a broken pipe or a
//! reset. This layer marks such replies `Connection: close`, as the 413 for a body over the
//! limit already is.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// Middleware (`axum::middleware::from_fn`): `Connection: close` on the reply to a request
/// whose body the handler did not read to its end.
pub async fn close_if_body_unread(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let flag = read.clone();
    let (parts, body) = req.into_parts();
    // Polled only once the body's own stream has ended: the handler read all of it.
    let end = futures::stream::poll_fn(move |_| {
        flag.store(true, Ordering::Release);
        Poll::Ready(None)
    });
    let body = Body::from_stream(body.into_data_stream().chain(end));
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !read.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
