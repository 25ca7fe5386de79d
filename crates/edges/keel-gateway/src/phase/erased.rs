//! [`Phase`] behind `dyn`: what lets the binary hand the gateway a list of phases of different
//! types. Contexts become `Box<dyn Any + Send>` (no allocation for a zero-sized one) and async
//! hooks boxed futures; only plugged-in phases pay that, the built-in duties are called
//! directly.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode, response};

use super::{Phase, Session, Step};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Phase`] of any type, as the gateway stores it; every `Phase` is one, so write
/// `Arc::new(MyPhase) as Arc<dyn ErasedPhase>`.
pub trait ErasedPhase: Send + Sync + 'static {
    fn erased_name(&self) -> &'static str;
    fn erased_new_ctx(&self) -> Box<dyn Any + Send>;
    fn erased_request_head(
        &self,
        session: &mut Session<'_>,
        head: &mut Parts,
        ctx: &mut (dyn Any + Send),
    ) -> Step;
    fn erased_request_body<'a, 's>(
        &'a self,
        session: &'a mut Session<'s>,
        head: &'a Parts,
        body: &'a Bytes,
        ctx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Step>;
    fn erased_upstream_request(
        &self,
        session: &mut Session<'_>,
        head: &Parts,
        ctx: &mut (dyn Any + Send),
    );
    fn erased_upstream<'a, 's>(
        &'a self,
        session: &'a mut Session<'s>,
        head: Parts,
        body: Bytes,
        ctx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Result<Response<Body>, (Parts, Bytes)>>;
    fn erased_upstream_response_head(
        &self,
        session: &mut Session<'_>,
        res: &mut response::Parts,
        ctx: &mut (dyn Any + Send),
    ) -> Step;
    fn erased_upstream_response_body<'a, 's>(
        &'a self,
        session: &'a mut Session<'s>,
        res: Response<Body>,
        ctx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Response<Body>>;
    fn erased_refusal(
        &self,
        session: &Session<'_>,
        res: &mut Response<Body>,
        ctx: &mut (dyn Any + Send),
    );
    fn erased_logging(&self, session: &Session<'_>, status: StatusCode, ctx: &mut (dyn Any + Send));
}

/// The context the gateway made with this phase's own `new_ctx`: anything else is a bug here.
fn ctx_of<P: Phase>(ctx: &mut (dyn Any + Send)) -> &mut P::Ctx {
    ctx.downcast_mut::<P::Ctx>()
        .expect("a phase gets the context it made")
}

impl<P: Phase> ErasedPhase for P {
    fn erased_name(&self) -> &'static str {
        self.name()
    }

    fn erased_new_ctx(&self) -> Box<dyn Any + Send> {
        Box::new(self.new_ctx())
    }

    fn erased_request_head(
        &self,
        session: &mut Session<'_>,
        head: &mut Parts,
        ctx: &mut (dyn Any + Send),
    ) -> Step {
        self.request_head(session, head, ctx_of::<P>(ctx))
    }

    fn erased_request_body<'a, 's>(
        &'a self,
        session: &'a mut Session<'s>,
        head: &'a Parts,
        body: &'a Bytes,
        ctx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Step> {
        Box::pin(self.request_body(session, head, body, ctx_of::<P>(ctx)))
    }

    fn erased_upstream_request(
        &self,
        session: &mut Session<'_>,
        head: &Parts,
        ctx: &mut (dyn Any + Send),
    ) {
        self.upstream_request(session, head, ctx_of::<P>(ctx));
    }

    fn erased_upstream<'a, 's>(
        &'a self,
        session: &'a mut Session<'s>,
        head: Parts,
        body: Bytes,
        ctx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Result<Response<Body>, (Parts, Bytes)>> {
        Box::pin(self.upstream(session, head, body, ctx_of::<P>(ctx)))
    }

    fn erased_upstream_response_head(
        &self,
        session: &mut Session<'_>,
        res: &mut response::Parts,
        ctx: &mut (dyn Any + Send),
    ) -> Step {
        self.upstream_response_head(session, res, ctx_of::<P>(ctx))
    }

    fn erased_upstream_response_body<'a, 's>(
        &'a self,
        session: &'a mut Session<'s>,
        res: Response<Body>,
        ctx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Response<Body>> {
        Box::pin(self.upstream_response_body(session, res, ctx_of::<P>(ctx)))
    }

    fn erased_refusal(
        &self,
        session: &Session<'_>,
        res: &mut Response<Body>,
        ctx: &mut (dyn Any + Send),
    ) {
        self.refusal(session, res, ctx_of::<P>(ctx));
    }

    fn erased_logging(
        &self,
        session: &Session<'_>,
        status: StatusCode,
        ctx: &mut (dyn Any + Send),
    ) {
        self.logging(session, status, ctx_of::<P>(ctx));
    }
}
