//! A connection's send queue: packets in order, from any number of senders to the one writer.
//!
//! Not a tokio channel because of what an idle connection pays: an mpsc channel allocates its
//! first block of 32 slots (about 3 KiB of packets) when it is made and keeps it for life,
//! while a real-time server holds mostly idle connections. This queue keeps a few slots at
//! most while it is empty, and the writer takes what is queued in one step under one lock.
//! Its bytes are bounded elsewhere (the connection's send budget), so the queue itself is
//! unbounded.
//!
//! A sender may also write its packet itself ("inline") when the writer waits with nothing
//! queued, saving the hop to the writer's task on a lone call. While it writes, the writer
//! task is neither woken nor allowed to take packets, so what is queued meanwhile goes out
//! after the inline packets: the queue's order is the wire's order.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::sync::lock;
use crate::wire::Packet;

/// The slots an emptied queue keeps (under half a KiB).
const KEEP: usize = 4;

/// The senders' end, held by the connection.
#[derive(Debug)]
pub(crate) struct SendQueue {
    shared: Arc<Mutex<Queue>>,
}

/// The writer's end: dropping it closes the queue and drops what it still holds.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Mutex<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    packets: VecDeque<Packet>,
    /// The writer task, while it waits with nothing queued.
    writer: Option<Waker>,
    /// The writer is to write what is queued and stop: the connection is ending.
    stopping: bool,
    closed: bool,
    /// Senders may write inline (the transport allows it).
    inline_allowed: bool,
    /// A sender is writing inline: the writer task waits until it is done.
    inline: bool,
    /// The writer task is to look at its writer even with nothing queued: an inline write
    /// left bytes unwritten, or failed.
    kick: bool,
}

/// What became of a packet offered for an inline write.
#[derive(Debug, PartialEq)]
pub(crate) enum Offered {
    /// Queued for the writer task as usual.
    Queued,
    /// The caller writes it now: the writer task waits for [`SendQueue::end_inline`].
    WriteInline(Packet),
}

/// The queue's two ends.
pub(crate) fn send_queue() -> (SendQueue, Outbox) {
    let shared = Arc::new(Mutex::new(Queue::default()));
    (
        SendQueue {
            shared: shared.clone(),
        },
        Outbox { shared },
    )
}

impl SendQueue {
    /// Queues `packet`; gives it back once the writer is gone.
    pub(crate) fn push(&self, packet: Packet) -> Result<(), Packet> {
        let writer = {
            let mut queue = lock(&self.shared);
            if queue.closed {
                return Err(packet);
            }
            queue.packets.push_back(packet);
            // Only a writer that waits is woken, and only once per batch it will take; not
            // while a sender writes inline, which wakes it when done.
            if queue.inline {
                None
            } else {
                queue.writer.take()
            }
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Queues `packet`, or hands it back for the caller to write itself when the writer task
    /// waits with nothing queued; gives it back as an error once the writer is gone.
    pub(crate) fn offer(&self, packet: Packet) -> Result<Offered, Packet> {
        let writer = {
            let mut queue = lock(&self.shared);
            if queue.closed {
                return Err(packet);
            }
            if queue.inline_allowed
                && !queue.inline
                && !queue.stopping
                && queue.writer.is_some()
                && queue.packets.is_empty()
            {
                queue.inline = true;
                return Ok(Offered::WriteInline(packet));
            }
            queue.packets.push_back(packet);
            if queue.inline {
                None
            } else {
                queue.writer.take()
            }
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(Offered::Queued)
    }

    /// Ends an inline write. `unwritten` (packets it could not write) go back to the head of
    /// the queue; with `kick` the writer task is to finish what the write left.
    pub(crate) fn end_inline(&self, unwritten: Vec<Packet>, kick: bool) {
        let writer = {
            let mut queue = lock(&self.shared);
            queue.inline = false;
            for packet in unwritten.into_iter().rev() {
                queue.packets.push_front(packet);
            }
            queue.kick |= kick;
            if queue.kick || queue.stopping || !queue.packets.is_empty() {
                queue.writer.take()
            } else {
                None
            }
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// Whether the writer task waits with nothing queued.
    #[cfg(test)]
    pub(crate) fn writer_waits(&self) -> bool {
        lock(&self.shared).writer.is_some()
    }

    /// Lets senders write inline (the writer can write without waiting).
    pub(crate) fn allow_inline(&self) {
        lock(&self.shared).inline_allowed = true;
    }

    /// Tells the writer to write what is queued and stop. Packets queued later still go out
    /// if the writer has not taken its last batch yet.
    pub(crate) fn stop(&self) {
        let writer = {
            let mut queue = lock(&self.shared);
            queue.stopping = true;
            // An inline writer wakes the writer task when it is done.
            if queue.inline {
                None
            } else {
                queue.writer.take()
            }
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

impl Outbox {
    /// Waits until something is queued, then moves up to `limit` packets into `batch`.
    /// Once [stopped](SendQueue::stop) it moves everything queued and returns true: that is
    /// the last batch. It also returns, with nothing, when an inline write left work.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Packet>, limit: usize) -> bool {
        poll_fn(|cx| {
            let mut queue = lock(&self.shared);
            if !queue.inline {
                let kicked = std::mem::take(&mut queue.kick);
                if queue.stopping {
                    queue.writer = None;
                    take(&mut queue, batch, usize::MAX);
                    return Poll::Ready(true);
                }
                if take(&mut queue, batch, limit) > 0 || kicked {
                    // Not waiting any more: no sender may write inline now.
                    queue.writer = None;
                    return Poll::Ready(false);
                }
            }
            if !queue
                .writer
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                queue.writer = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next packet queued, if any (tests look at what a connection was sent).
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<Packet> {
        let mut one = Vec::with_capacity(1);
        self.try_recv_many(&mut one, 1);
        one.pop()
    }

    /// Moves up to `limit` packets that are queued now into `batch`, without waiting.
    pub(crate) fn try_recv_many(&mut self, batch: &mut Vec<Packet>, limit: usize) -> usize {
        take(&mut lock(&self.shared), batch, limit)
    }
}

fn take(queue: &mut Queue, batch: &mut Vec<Packet>, limit: usize) -> usize {
    let room = limit.saturating_sub(batch.len());
    let taken = queue.packets.len().min(room);
    batch.extend(queue.packets.drain(..taken));
    if queue.packets.is_empty() && queue.packets.capacity() > KEEP {
        // A burst's room is not kept. The first few slots are: an event to every
        // connection would otherwise cost each of them an allocation by the broadcasting
        // thread and a free by its writer's.
        queue.packets = VecDeque::with_capacity(KEEP);
    }
    taken
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let packets = {
            let mut queue = lock(&self.shared);
            queue.closed = true;
            queue.writer = None;
            std::mem::take(&mut queue.packets)
        };
        drop(packets);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn packets_come_out_in_order_in_batches_of_at_most_the_limit() {
        let (queue, mut outbox) = send_queue();
        for _ in 0..5 {
            queue.push(Packet::Ping).unwrap();
        }
        queue.push(Packet::Pong).unwrap();
        let mut batch = Vec::new();
        assert!(!outbox.recv_many(&mut batch, 4).await);
        assert_eq!(batch.len(), 4);
        assert_eq!(outbox.try_recv_many(&mut batch, 4), 0, "the batch is full");
        assert_eq!(outbox.try_recv_many(&mut batch, 6), 2);
        assert!(batch[..5].iter().all(|p| *p == Packet::Ping));
        assert_eq!(batch[5], Packet::Pong);
        assert_eq!(outbox.try_recv_many(&mut batch, 64), 0);
        // Drained, the queue keeps only a few slots.
        assert!(lock(&outbox.shared).packets.capacity() <= KEEP);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push() {
        let (queue, mut outbox) = send_queue();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            outbox.recv_many(&mut batch, 64).await;
            batch
        });
        // The writer is parked on the empty queue before the push comes.
        tokio::task::yield_now().await;
        queue.push(Packet::Pong).unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch, [Packet::Pong]);
    }

    #[tokio::test]
    async fn a_stopped_writer_takes_everything_queued_as_its_last_batch() {
        let (queue, mut outbox) = send_queue();
        for _ in 0..3 {
            queue.push(Packet::Ping).unwrap();
        }
        queue.stop();
        let mut batch = Vec::new();
        assert!(outbox.recv_many(&mut batch, 2).await, "the last batch");
        assert_eq!(batch.len(), 3, "past the limit: nothing is left behind");
        // A writer waiting on an empty queue is woken by the stop.
        let (queue, mut outbox) = send_queue();
        let writer = tokio::spawn(async move { outbox.recv_many(&mut Vec::new(), 64).await });
        tokio::task::yield_now().await;
        queue.stop();
        let last = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert!(last);
    }

    #[test]
    fn once_the_writer_is_gone_pushes_are_refused_and_the_queue_is_emptied() {
        let (queue, outbox) = send_queue();
        queue.push(Packet::Ping).unwrap();
        drop(outbox);
        assert_eq!(queue.push(Packet::Pong), Err(Packet::Pong));
        assert!(lock(&queue.shared).packets.is_empty());
    }

    /// Counts its wake-ups.
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn only_a_lone_packet_with_the_writer_waiting_is_written_inline_and_nothing_overtakes_it() {
        use std::future::Future;
        use std::sync::atomic::Ordering::SeqCst;

        let (queue, mut outbox) = send_queue();
        queue.allow_inline();
        let wakes = Arc::new(CountWakes(0.into()));
        let waker = Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut recv = |outbox: &mut Outbox| {
            let mut batch = Vec::new();
            let polled = std::pin::pin!(outbox.recv_many(&mut batch, 64)).poll(&mut cx);
            polled.map(|_| batch)
        };
        // The writer has not waited yet: queued.
        assert_eq!(queue.offer(Packet::Ping), Ok(Offered::Queued));
        assert_eq!(recv(&mut outbox), Poll::Ready(vec![Packet::Ping]));
        // Busy writing (not waiting): queued again.
        assert_eq!(queue.offer(Packet::Ping), Ok(Offered::Queued));
        assert_eq!(recv(&mut outbox), Poll::Ready(vec![Packet::Ping]));
        assert!(recv(&mut outbox).is_pending(), "now it waits");
        // Something queued already: queued behind it, not written ahead of it.
        queue.push(Packet::Pong).unwrap();
        assert_eq!(queue.offer(Packet::Ping), Ok(Offered::Queued));
        assert_eq!(
            recv(&mut outbox),
            Poll::Ready(vec![Packet::Pong, Packet::Ping])
        );
        assert!(recv(&mut outbox).is_pending());
        let woken = wakes.0.load(SeqCst);
        // Waiting with nothing queued: the sender writes it.
        assert_eq!(
            queue.offer(Packet::Pong),
            Ok(Offered::WriteInline(Packet::Pong))
        );
        // Meanwhile others queue, and the writer neither wakes nor takes them.
        assert_eq!(queue.offer(Packet::Ping), Ok(Offered::Queued));
        queue.push(Packet::Ping).unwrap();
        queue.stop();
        assert_eq!(wakes.0.load(SeqCst), woken);
        assert!(recv(&mut outbox).is_pending());
        // Done: what it could not write goes first, then the rest, then the writer stops.
        queue.end_inline(vec![Packet::Pong], false);
        assert_eq!(wakes.0.load(SeqCst), woken + 1);
        assert_eq!(
            recv(&mut outbox),
            Poll::Ready(vec![Packet::Pong, Packet::Ping, Packet::Ping])
        );
    }
}
