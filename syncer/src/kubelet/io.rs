//! Moving bytes in fewer, larger pieces (measured in docs/performance.md, the kubelet streams):
//!
//! - [`Coalesced`]: a streamed response body that hands on, as one frame, every data frame the
//!   host body has ready (up to [`COALESCE_MAX`]), instead of one frame per host chunk: fewer
//!   chunks, TLS writes and wake-ups here and fewer reads in the virtual API server. It never
//!   waits for more data: what is ready goes out at once (`-f` and the first byte are not
//!   delayed).
//! - [`read_buffered`]: a TCP stream whose reads go through a 64 KiB buffer, for under TLS:
//!   rustls reads at most 4 KiB per call, so without it a 16 KiB record cost four `read`
//!   system calls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};

/// The most one coalesced frame holds.
pub const COALESCE_MAX: usize = 64 << 10;

/// The read buffer under TLS.
pub const READ_BUFFER: usize = 64 << 10;

/// A TCP (or any) stream with its reads buffered ([`READ_BUFFER`]); writes pass through.
pub fn read_buffered<T: tokio::io::AsyncRead>(io: T) -> tokio::io::BufReader<T> {
    tokio::io::BufReader::with_capacity(READ_BUFFER, io)
}

/// A connector (kube's `HttpConnector`) whose TCP streams read through [`read_buffered`]: for
/// the kubelet endpoint's host client, so that rustls on the host side reads 64 KiB at a time.
#[derive(Clone)]
pub struct ReadBufferedConnector<C>(pub C);

/// A connected stream of [`ReadBufferedConnector`].
pub struct ReadBufferedTcp(hyper_util::rt::TokioIo<tokio::io::BufReader<tokio::net::TcpStream>>);

impl<C> tower::Service<http::Uri> for ReadBufferedConnector<C>
where
    C: tower::Service<http::Uri, Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>>,
    C::Future: Send + 'static,
{
    type Response = ReadBufferedTcp;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<ReadBufferedTcp, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(ReadBufferedTcp(hyper_util::rt::TokioIo::new(read_buffered(tcp))))
        })
    }
}

impl hyper_util::client::legacy::connect::Connection for ReadBufferedTcp {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.0.inner().get_ref().connected()
    }
}

impl hyper::rt::Read for ReadBufferedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ReadBufferedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

/// See the module docs.
pub struct Coalesced<B: HttpBody> {
    inner: B,
    /// A frame (or the end, or an error) read after data was gathered: handed on next.
    held: Option<Option<Result<Frame<Bytes>, B::Error>>>,
}

impl<B: HttpBody<Data = Bytes>> Coalesced<B> {
    pub fn new(inner: B) -> Self {
        Self { inner, held: None }
    }
}

impl<B> HttpBody for Coalesced<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(held);
        }
        let first = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let first = match first.into_data() {
            Ok(data) => data,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        if first.len() >= COALESCE_MAX {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        // Gather what is ready now; copying only once a second frame comes.
        let mut gathered: Option<BytesMut> = None;
        loop {
            let len = gathered.as_ref().map_or(first.len(), BytesMut::len);
            if len >= COALESCE_MAX {
                break;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let buf = gathered.get_or_insert_with(|| {
                            let mut b = BytesMut::with_capacity(COALESCE_MAX.max(first.len()));
                            b.extend_from_slice(&first);
                            b
                        });
                        buf.extend_from_slice(&data);
                    }
                    Err(frame) => {
                        this.held = Some(Some(Ok(frame)));
                        break;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.held = Some(Some(Err(e)));
                    break;
                }
                Poll::Ready(None) => {
                    this.held = Some(None);
                    break;
                }
                // Nothing more now: hand on what there is (the inner body wakes us later).
                Poll::Pending => break,
            }
        }
        let data = gathered.map_or(first, BytesMut::freeze);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.held, Some(None)) || (self.held.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.held.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::collections::VecDeque;

    /// A body that yields its steps in order: data, `Pending` once (waking at once), an error.
    struct Steps(VecDeque<Step>);
    enum Step {
        Data(&'static [u8]),
        Pending,
        Fail,
    }

    impl HttpBody for Steps {
        type Data = Bytes;
        type Error = &'static str;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            match self.0.pop_front() {
                None => Poll::Ready(None),
                Some(Step::Data(d)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(d))))),
                Some(Step::Pending) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Step::Fail) => Poll::Ready(Some(Err("broken"))),
            }
        }
    }

    async fn frames(steps: Vec<Step>) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut body = Coalesced::new(Steps(steps.into()));
        let mut out = Vec::new();
        // As hyper does: the first error ends the body.
        while let Some(f) = body.frame().await {
            let failed = f.is_err();
            out.push(f.map(|f| f.into_data().map(|d| d.to_vec()).unwrap_or_default()));
            if failed {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn ready_frames_are_joined_and_nothing_waits() {
        use Step::*;
        let out = frames(vec![Data(b"a"), Data(b"bc"), Pending, Data(b"d"), Data(b"e")]).await;
        assert_eq!(out, vec![Ok(b"abc".to_vec()), Ok(b"de".to_vec())]);
        let out = frames(vec![Data(b"a"), Fail, Data(b"never")]).await;
        assert_eq!(out, vec![Ok(b"a".to_vec()), Err("broken")]);
        assert!(frames(vec![]).await.is_empty());
    }

    #[tokio::test]
    async fn frames_stop_growing_at_the_maximum() {
        static BIG: [u8; 40 << 10] = [7; 40 << 10];
        let out = frames(vec![Step::Data(&BIG), Step::Data(&BIG), Step::Data(&BIG)]).await;
        let sizes: Vec<usize> = out.iter().map(|f| f.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, vec![80 << 10, 40 << 10]);
    }
}
