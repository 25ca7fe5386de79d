//! A cached route's way through the response cache (RFC 9111).

use std::net::SocketAddr;

use axum::body::Body;
use bytes::Bytes;
use http::Response;

use crate::Edge;
use crate::proxy::{Outcome, forward};
use crate::route::Route;

pub(crate) async fn serve<'e>(
    _edge: &'e Edge,
    route: &'e Route,
    head: &http::request::Parts,
    body: Bytes,
    peer: SocketAddr,
    outcome: &mut Outcome<'e>,
) -> Response<Body> {
    forward(route, head, body, peer, outcome).await
}
