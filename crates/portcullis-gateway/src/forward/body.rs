//! Request and response bodies on their way through: a deadline for the response
//! (`gateway.total_timeout`), and how far the client's body got (finished, or broken by the
//! client: bad chunked framing, a connection gone).

/// Marks a request whose body the gateway has read whole (to validate or to map it): a body in
/// memory can be neither slow nor broken any more, so it goes upstream as it is, without the
/// wrappers that watch a client's body on its way through (one allocation and one layer per
/// poll each).
#[derive(Clone, Copy, Debug)]
pub struct Received;

/// A request whose body the gateway holds whole.
pub fn received(
    mut parts: axum::http::request::Parts,
    body: impl Into<axum::body::Bytes>,
) -> axum::http::Request<axum::body::Body> {
    parts.extensions.insert(Received);
    axum::http::Request::from_parts(parts, axum::body::Body::from(body.into()))
}

/// A response body that must end by a deadline (`gateway.total_timeout`): past it the body fails,
/// so hyper cuts the response off and closes the connection. The timer is only armed when the
/// body first has to wait, so a response that is already complete costs none.
#[derive(Debug)]
pub struct Deadline<B> {
    inner: B,
    deadline: tokio::time::Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: tokio::time::Instant) -> Self {
        Deadline {
            inner,
            deadline,
            timer: None,
        }
    }
}

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response did not finish within gateway.total_timeout")]
pub struct TotalTimeout;

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.timer.as_ref().is_some_and(|t| t.is_elapsed()) {
            return Poll::Ready(Some(Err(TotalTimeout.into())));
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!("upstream response cut off: gateway.total_timeout");
                        Poll::Ready(Some(Err(TotalTimeout.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How far a request body has been read: to its end, or to an error of the client's.
#[derive(Debug, Default)]
pub struct BodyState(std::sync::atomic::AtomicU8);

impl BodyState {
    const FINISHED: u8 = 1;
    const FAILED: u8 = 2;

    /// The client sent its whole body.
    pub fn finished(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == Self::FINISHED
    }

    /// Reading the client's body failed: bad chunked framing, or the client went away.
    pub fn failed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == Self::FAILED
    }

    fn set(&self, state: u8) {
        self.0.store(state, std::sync::atomic::Ordering::Release);
    }
}

/// A request body that notes when it has been read to its end, or failed.
#[derive(Debug)]
pub struct ReadToEnd<B> {
    inner: B,
    state: std::sync::Arc<BodyState>,
}

impl<B> ReadToEnd<B> {
    /// The wrapped body, and the state it keeps.
    pub fn new(inner: B) -> (Self, std::sync::Arc<BodyState>) {
        let state = std::sync::Arc::new(BodyState::default());
        (
            ReadToEnd {
                inner,
                state: state.clone(),
            },
            state,
        )
    }
}

impl<B> hyper::body::Body for ReadToEnd<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            std::task::Poll::Ready(Some(Err(_))) => this.state.set(BodyState::FAILED),
            std::task::Poll::Ready(None) => this.state.set(BodyState::FINISHED),
            _ if this.inner.is_end_stream() => this.state.set(BodyState::FINISHED),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an upstream failure was the request body outgrowing its limit.
pub(crate) fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A request body whose first frame has been read already, before anything went upstream.
#[derive(Debug)]
pub struct Primed<B: hyper::body::Body> {
    first: Option<hyper::body::Frame<B::Data>>,
    rest: B,
}

impl<B> Primed<B>
where
    B: hyper::body::Body + Unpin,
{
    /// Waits for the body's first frame: a body that is broken from its start (an HTTP/2 body
    /// that contradicts its `content-length`, a bad first chunk) fails here, and the upstream
    /// never sees its request line.
    pub async fn new(mut body: B) -> Result<Self, B::Error> {
        use http_body_util::BodyExt;
        let first = body.frame().await.transpose()?;
        Ok(Primed { first, rest: body })
    }
}

impl<B> hyper::body::Body for Primed<B>
where
    B: hyper::body::Body + Unpin,
    B::Data: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.first.take() {
            Some(frame) => std::task::Poll::Ready(Some(Ok(frame))),
            None => std::pin::Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let hint = self.rest.size_hint();
        let Some(first) = self.first.as_ref().and_then(|f| f.data_ref()) else {
            return hint;
        };
        let n = bytes_len(first);
        let mut sum = hyper::body::SizeHint::new();
        sum.set_lower(hint.lower() + n);
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper + n);
        }
        sum
    }
}

fn bytes_len<D: hyper::body::Buf>(d: &D) -> u64 {
    d.remaining() as u64
}
