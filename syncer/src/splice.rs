//! Two connections spliced byte for byte (the kubelet endpoint's exec/attach/port-forward, the
//! CLI's port-forward), until both directions have ended.
//!
//! Unlike `tokio::io::copy_bidirectional`, an error in one direction does not drop the other:
//! when a command ends, the host answers and closes, and the client's last frames (stdin, its
//! end-of-stream, pings) can no longer be written to it; the answer the host already sent must
//! still reach the client to its last byte. `copy_bidirectional` returned that write error at
//! once and dropped the host connection with the end of the output unread (a 1 MiB `kubectl
//! exec -i` got 640-740 KiB back, now and then).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The buffer each way of the splices in use: the most a splice holds beyond the two TCP
/// windows (8 KiB, tokio's default, moved a port-forward at a third of the direct rate).
pub const BUFFER: usize = 64 << 10;

/// How a splice ended: bytes each way and the first error of each direction, if any.
#[derive(Debug, Default)]
pub struct Spliced {
    /// Client -> server.
    pub up: u64,
    /// Server -> client.
    pub down: u64,
    pub up_error: Option<io::Error>,
    pub down_error: Option<io::Error>,
    /// Whether the client -> server direction ended first.
    pub up_ended_first: bool,
}

/// Copies `client` -> `server` and `server` -> `client` at once, with a buffer of `buffer` bytes
/// each way. A direction ends at its reader's end (then its writer is shut down) or at its first
/// error. The splice ends when both have ended, or as soon as writing to the client fails (the
/// client is gone: nothing left to deliver). A failed write to the server never cuts what the
/// server still sends.
pub async fn splice<C, S>(client: C, server: S, buffer: usize) -> Spliced
where
    C: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let up = one_way(&mut client_read, &mut server_write, buffer);
    let down = one_way(&mut server_read, &mut client_write, buffer);
    tokio::pin!(up, down);
    let mut out = Spliced::default();
    tokio::select! {
        (n, error) = &mut up => {
            (out.up, out.up_error, out.up_ended_first) = (n, error, true);
            (out.down, out.down_error) = down.await;
        }
        (n, error) = &mut down => {
            (out.down, out.down_error) = (n, error);
            if out.down_error.is_none() {
                (out.up, out.up_error) = up.await;
            }
        }
    }
    out
}

/// Copies `from` to `to` until `from` ends (then shuts `to` down) or an error. Every piece read
/// is flushed at once: interactive streams must not wait for a full buffer.
async fn one_way<R, W>(from: &mut R, to: &mut W, buffer: usize) -> (u64, Option<io::Error>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; buffer.max(1)];
    let mut moved = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => return (moved, to.shutdown().await.err()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return (moved, Some(error)),
        };
        if let Err(error) = async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        }
        .await
        {
            return (moved, Some(error));
        }
        moved += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_each_end_sees_the_other_close() {
        let (client, client_far) = duplex(4 << 10);
        let (server, mut server_far) = duplex(4 << 10);
        let spliced = tokio::spawn(splice(client, server, 1 << 10));
        let (up, down) = (pattern(300_000), pattern(200_000));
        let (up2, down2) = (up.clone(), down.clone());
        let far_client = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client_far);
            let send = async {
                w.write_all(&up2).await?;
                w.shutdown().await
            };
            let mut got = Vec::new();
            let (sent, read) = tokio::join!(send, r.read_to_end(&mut got));
            sent.and(read).map(|_| got)
        });
        let mut got = Vec::new();
        let (mut r, mut w) = tokio::io::split(&mut server_far);
        let (read, sent) = tokio::join!(r.read_to_end(&mut got), async {
            w.write_all(&down2).await?;
            w.shutdown().await
        });
        read.unwrap();
        sent.unwrap();
        drop(server_far);
        assert_eq!(got, up);
        assert_eq!(far_client.await.unwrap().unwrap(), down);
        let s = spliced.await.unwrap();
        assert_eq!((s.up, s.down), (up.len() as u64, down.len() as u64));
        assert!(s.up_error.is_none() && s.down_error.is_none(), "{s:?}");
    }

    #[tokio::test]
    async fn a_server_that_answers_and_closes_has_its_whole_answer_delivered() {
        // The server sends its answer and goes away while the client still writes: writing to
        // the server fails, and every byte it sent before must still reach the client.
        let answer = pattern(1 << 20);
        let (client, client_far) = duplex(64 << 10);
        let (server, mut server_far) = duplex(2 << 20);
        server_far.write_all(&answer).await.unwrap();
        drop(server_far);
        let spliced = tokio::spawn(splice(client, server, 8 << 10));
        let (mut r, mut w) = tokio::io::split(client_far);
        let writer = tokio::spawn(async move {
            // Writes until the splice stops reading (the pipe breaks).
            let chunk = vec![b'x'; 4 << 10];
            while w.write_all(&chunk).await.is_ok() {}
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), answer.len());
        assert!(got == answer);
        let s = spliced.await.unwrap();
        assert_eq!(s.down, answer.len() as u64);
        assert!(
            s.up_error.is_some(),
            "the write to the closed server failed: {s:?}"
        );
        assert!(s.down_error.is_none(), "{s:?}");
        drop(r);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_gone_ends_the_splice_without_waiting_for_the_server() {
        let (client, client_far) = duplex(1 << 10);
        let (server, mut server_far) = duplex(1 << 10);
        drop(client_far);
        let spliced = tokio::spawn(splice(client, server, 1 << 10));
        // The server keeps its connection open and sends: the write to the client fails and
        // the splice ends although the server never closed.
        let _ = server_far.write_all(&pattern(64 << 10)).await;
        let s = spliced.await.unwrap();
        assert!(s.down_error.is_some(), "{s:?}");
        drop(server_far);
    }
}
