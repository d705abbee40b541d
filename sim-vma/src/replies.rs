//! The VMA's answers as bytes: fixed-body responses with the headers the real VMA's Go handlers
//! set ([`FixedResponse`], sent by hyper or written by [`crate::hot`] byte for byte alike), and the
//! small response builders the routes use.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use bytes::Bytes;

/// The headers of a fixed-body answer, as the real VMA's handlers set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseHeaders {
    Json,
    /// Progress: JSON that must not be cached.
    JsonNoCache,
    /// Go's `http.Error`.
    Text,
}

impl ResponseHeaders {
    pub fn pairs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ResponseHeaders::Json => &[("content-type", "application/json")],
            ResponseHeaders::JsonNoCache => &[("content-type", "application/json"), ("cache-control", "no-cache")],
            ResponseHeaders::Text => {
                &[("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]
            }
        }
    }
}

/// An answer with a fixed body. hyper sends it ([`FixedResponse::into_response`]) or the hot path writes
/// it ([`crate::hot`]); `tests/wire.rs` proves both give the same bytes.
#[derive(Debug)]
pub struct FixedResponse {
    pub status: StatusCode,
    pub headers: ResponseHeaders,
    pub body: Bytes,
}

impl FixedResponse {
    pub fn new(status: StatusCode, headers: ResponseHeaders, body: impl Into<Bytes>) -> FixedResponse {
        FixedResponse { status, headers, body: body.into() }
    }

    /// Go's `http.Error`.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> FixedResponse {
        FixedResponse::new(status, ResponseHeaders::Text, body)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() = self.status;
        for (name, value) in self.headers.pairs() {
            r.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        r
    }
}

pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A plain-text answer as Go's `http.Error` writes it.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    FixedResponse::text(status, body).into_response()
}

pub fn json_response(status: StatusCode, body: String) -> Response<Body> {
    FixedResponse::new(status, ResponseHeaders::Json, body).into_response()
}
