//! A deadline for a request's whole body (`body_read_timeout`), and how
//! its end is told apart from the other ways reading a body fails.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A request's body with a deadline for all of it, from the moment its
/// header came. Without one, a client sending its body a byte every few
/// seconds holds its connection, and the request's task, for ever: the
/// request is in flight, so the idle timeout never runs, and the bytes
/// keep coming. The timer is made only when the body is not all there at
/// once (most bodies come with their header).
pub struct Deadline<B> {
    inner: B,
    limit: Duration,
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, limit: Duration) -> Deadline<B> {
        Deadline {
            inner,
            limit,
            at: Instant::now() + limit,
            timer: None,
        }
    }
}

/// A request body not received within `body_read_timeout`.
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request body not received in time: the limit is {}s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<B::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let at = this.at;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(this.limit).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why reading a request's body failed, from the error `to_bytes` gives.
pub enum BodyFailure {
    TooLarge,
    TimedOut(String),
    /// The client hung up or broke the protocol mid-body.
    Broken,
}

pub fn body_failure(e: &(dyn std::error::Error + 'static)) -> BodyFailure {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return BodyFailure::TooLarge;
        }
        if let Some(t) = c.downcast_ref::<BodyTimedOut>() {
            return BodyFailure::TimedOut(t.to_string());
        }
        cause = c.source();
    }
    BodyFailure::Broken
}
