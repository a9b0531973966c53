//! The connection's writer task: it writes what senders queue, in batches, while senders
//! write lone packets inline whenever it waits with nothing queued. It starts the first time a
//! packet waits for it ([`WriterTask`]), so a connection that never needs it never pays for it,
//! and it ends again when the connection goes quiet.

use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use super::budget::InFlight;
use super::io::WriteError;
use super::outbox::Next;
use super::writer::Taken;
use super::{Conn, Outbox};
use crate::Status;
use crate::stats::Counters;

/// What a writer task runs with; [`WriterTask`] holds it while no task runs.
pub(super) struct WriterParts {
    pub(super) outbox: Outbox,
    pub(super) busy: Busy,
    /// A write that makes no progress for this long ends the connection.
    pub(super) stall: Duration,
}

/// Writes queued packets; whatever is queued together goes out in one write and one flush.
/// A write that makes no progress for `stall` ends the connection: the engine hears of it, as
/// it does of the task ending any other way. Asked to retire with nothing queued, it hands its
/// parts back to `task` and ends, the connection going on without it.
/// The writer is in the connection's writer slot when the task starts: while the task waits,
/// senders may write inline with it.
async fn write_loop(task: Arc<WriterTask>, parts: WriterParts) {
    const BATCH: usize = 64;
    let WriterParts {
        mut outbox,
        mut busy,
        stall,
    } = parts;
    let conn = busy.conn.clone();
    // Where the write is not the send (QUIC: quinn's connection task sends what the stream
    // holds when it next runs), that task gathers the writes, and stepping aside only delays
    // them (see `Scheme::writes_send`).
    let steps_aside = conn.scheme().writes_send();
    let slot = &conn.shared.writer;
    // However the task ends, the transport goes with it, not with the last `Conn`; unless it
    // retires, leaving the transport to the next task.
    let mut clear = ClearWriterOnDrop(Some(conn.clone()));
    // One slot kept across wake-ups: a lone packet (an event, an answer) costs no allocation.
    let mut batch = Vec::new();
    loop {
        let next = outbox.recv_many(&mut batch, BATCH).await;
        if next == Next::Retire {
            // Nor does the room kept for the next write stay: the next lone packets are
            // written inline.
            outbox.keep_slots(false);
            slot.give_back_buffers();
            match task.retire(WriterParts {
                outbox,
                busy,
                stall,
            }) {
                Ok(()) => {
                    clear.0 = None;
                    return;
                }
                // Something was queued meanwhile: not quiet after all.
                Err(parts) => {
                    (outbox, busy) = (parts.outbox, parts.busy);
                    continue;
                }
            }
        }
        let stopping = next == Next::Stop;
        if !stopping && steps_aside && batch.len() < BATCH && busy.more_coming(batch.len()) {
            // Let the tasks that are ready to run (callers woken by the same read, handlers
            // answering) queue what they have first: one write then carries many packets
            // instead of one each, which is what the syscalls per call come down to. With
            // one call at a time nothing more is coming, and the packet leaves at once.
            // tokio's `yield_now` defers the wake-up until this worker has run all that is
            // ready. A task that wakes itself instead runs again behind only what was queued
            // at that moment, rescheduled as a yield that tokio announces to a parked worker:
            // a third of a busy client's worker wake-ups came from here, and 16 to 64 calls
            // in flight got through 6 % to 8 % slower (`stmp-bench/README.md`, session 42).
            tokio::task::yield_now().await;
            outbox.try_recv_many(&mut batch, BATCH);
        }
        let Taken {
            writer,
            owed_room,
            unfinished,
            failed: inline_failed,
        } = slot.take();
        let Some(mut writer) = writer else {
            return;
        };
        let inline_failed = inline_failed.map(|status| WriteError::Failed(*status));
        let mut room = owed_room;
        if inline_failed.is_some() || !batch.is_empty() || unfinished {
            let written = match inline_failed {
                Some(failed) => Err(failed),
                None => writer.write_batch(&batch, stall).await,
            };
            room += outbox.room_taken();
            if let Err(error) = written {
                conn.release_send_bytes(room);
                if let WriteError::Stalled(_) = error {
                    Counters::count(&conn.counters().write_stalls);
                }
                let status = Status::from(error);
                tracing::debug!(conn = conn.id(), %status, "write failed");
                conn.shared.close_requested.write_failed(status);
                return;
            }
        }
        if stopping {
            conn.release_send_bytes(room);
            let _ = tokio::time::timeout(stall, writer.shutdown()).await;
            return;
        }
        // Given back under the queue's lock when the loop next looks at it, right below.
        outbox.release_later(room);
        // The queue, the batch and the write buffer keep their room for the next write when
        // it is bound to be as large: when more is under way already, and when this write
        // carried several packets. A server's handlers answer inline, so between two reads
        // of a client with 64 calls in flight nothing is under way; given back after every
        // write, the room grew again through every power of two for the next one. A write
        // of one packet gives it back, and so does every connection that goes quiet, when
        // its writer task retires.
        let keep_room = batch.len() > 1 || busy.more_coming(0);
        outbox.keep_slots(keep_room);
        batch.clear();
        if !keep_room {
            writer.trim_buffer();
            if batch.capacity() > 1 {
                batch = Vec::new();
            }
        }
        slot.put(writer);
    }
}

/// The connection's writer task, started when it is needed: when a packet is queued for it
/// rather than written inline by its sender, when an inline write leaves bytes for it, or when
/// the connection ends. Until then the send queue holds this as the waiting writer's waker,
/// so senders write inline as they would with the task waiting. Connections that sit idle, or
/// only ever write one packet at a time, never start one: a task is about 1.3 KB a
/// connection, a fifth of what an idle TCP connection costs. A task that was started ends
/// again when the connection goes quiet ([`retire_if_waiting`](Self::retire_if_waiting)),
/// so a burst (a broadcast's event, a reconnecting client's replay) does not keep it for the
/// connection's life.
pub(super) struct WriterTask {
    state: std::sync::Mutex<WriterTaskState>,
}

enum WriterTaskState {
    Waiting {
        parts: WriterParts,
        /// Where to start it: the waker may be woken on any thread (a broadcast from a thread
        /// of its own, say).
        runtime: tokio::runtime::Handle,
    },
    /// Started; its handle is there until the engine takes it to wait for the task's end.
    Started(Option<tokio::task::JoinHandle<()>>),
}

impl WriterTask {
    /// A writer task not started yet, registered as the send queue's waiting writer.
    pub(super) fn waiting(conn: &Conn, parts: WriterParts) -> Arc<WriterTask> {
        let task = Arc::new(WriterTask {
            state: std::sync::Mutex::new(WriterTaskState::Waiting {
                parts,
                runtime: tokio::runtime::Handle::current(),
            }),
        });
        if !conn.shared.outbox.writer_waits_with(task.lazy_waker()) {
            task.start(&mut crate::sync::lock(&task.state));
        }
        task
    }

    /// The waker that starts the task: what the send queue holds while no task runs.
    fn lazy_waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// Tells the writer to write what is queued and stop, starting the task if it is not
    /// running; hands out the task's handle the first time only.
    pub(super) fn stop(self: &Arc<Self>, conn: &Conn) -> Option<tokio::task::JoinHandle<()>> {
        conn.shared.outbox.stop();
        let mut state = crate::sync::lock(&self.state);
        self.start(&mut state);
        match &mut *state {
            WriterTaskState::Started(handle) => handle.take(),
            WriterTaskState::Waiting { .. } => None,
        }
    }

    /// Tells the writer to write what is queued and stop, as the engine ends. A running task
    /// does that and the engine waits for it; with none running the engine runs the writer's
    /// last turn itself, rather than spawning a task for it (most connections close quiet).
    pub(super) fn finish(
        self: &Arc<Self>,
        conn: &Conn,
    ) -> Finishing<impl Future<Output = ()> + Send + 'static> {
        // Taken before the stop wakes the waiting writer, so that the wake starts nothing.
        let taken = std::mem::replace(
            &mut *crate::sync::lock(&self.state),
            WriterTaskState::Started(None),
        );
        conn.shared.outbox.stop();
        match taken {
            WriterTaskState::Waiting { parts, .. } => {
                Finishing::Here(write_loop(self.clone(), parts))
            }
            WriterTaskState::Started(Some(handle)) => Finishing::Task(handle),
            WriterTaskState::Started(None) => Finishing::Done,
        }
    }

    /// Asks a running task that waits with nothing queued to end, as `conn` has gone quiet;
    /// the next packet that waits for a writer starts one again.
    pub(super) fn retire_if_waiting(self: &Arc<Self>, conn: &Conn) {
        conn.shared.outbox.retire_writer(&self.lazy_waker());
    }

    /// Starts the task if it is not running. The parts it holds until then (the connection
    /// among them) leave with it: nothing stays behind to keep the connection's shared state
    /// alive.
    fn start(self: &Arc<Self>, state: &mut WriterTaskState) {
        *state = match std::mem::replace(state, WriterTaskState::Started(None)) {
            WriterTaskState::Waiting { parts, runtime } => {
                WriterTaskState::Started(Some(runtime.spawn(write_loop(self.clone(), parts))))
            }
            started => started,
        };
    }

    /// Called by the running task as it retires: takes its parts back and waits, unstarted,
    /// as the send queue's writer, unless something was queued meanwhile (then the parts go
    /// back to the task, which goes on). The state's lock is held while the queue takes the
    /// waker: a sender that wakes it at once starts a task only once the parts are here.
    fn retire(self: &Arc<Self>, parts: WriterParts) -> Result<(), WriterParts> {
        let mut state = crate::sync::lock(&self.state);
        if !parts
            .busy
            .conn
            .shared
            .outbox
            .writer_waits_with(self.lazy_waker())
        {
            return Err(parts);
        }
        // The running task's handle goes (it is ending); whoever stops the writer later gets
        // the handle of the task it starts.
        *state = WriterTaskState::Waiting {
            parts,
            runtime: tokio::runtime::Handle::current(),
        };
        Ok(())
    }
}

/// How the writer's last turn runs as the engine ends ([`WriterTask::finish`]).
pub(super) enum Finishing<F> {
    /// In the writer task, which the engine waits for.
    Task(tokio::task::JoinHandle<()>),
    /// In the engine, which runs this future.
    Here(F),
    /// It ran already.
    Done,
}

/// Woken as the waiting writer: starts the task, which looks at the queue when it first runs
/// and from then on waits with a waker of its own. Woken again before that, it does nothing.
impl std::task::Wake for WriterTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.start(&mut crate::sync::lock(&self.state));
    }
}

/// Drops the writer left in the slot when the writer task ends, and tells the engine, which
/// cannot go on without it (a failure reported before keeps its status). Emptied when the task
/// retires: the writer stays for the next task.
struct ClearWriterOnDrop(Option<Conn>);

impl Drop for ClearWriterOnDrop {
    fn drop(&mut self) {
        let Some(conn) = &self.0 else {
            return;
        };
        conn.shared.writer.clear();
        conn.shared
            .close_requested
            .write_failed(Status::network_error("cannot write to the connection"));
    }
}

/// Stops the connection's writer when the engine ends, however it ends (dropped half-way, or
/// before it ran).
pub(super) struct StopWriterOnDrop {
    pub(super) conn: Conn,
    pub(super) task: Arc<WriterTask>,
}

impl Drop for StopWriterOnDrop {
    fn drop(&mut self) {
        // The task writes what is queued and ends on its own.
        drop(self.task.stop(&self.conn));
    }
}

/// How much of a connection's work is under way: its calls waiting for an answer and the
/// requests its handlers are serving. Each of them is a packet about to be queued.
pub(super) struct Busy {
    pub(super) conn: Conn,
    /// The connection's handler slots, one unit per handler running.
    pub(super) handling: Arc<InFlight>,
}

impl Busy {
    /// Whether more packets are under way than the `batch` already holds.
    fn more_coming(&self, batch: usize) -> bool {
        self.conn.pending_calls() + self.handling.used() > batch
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context as TaskContext, Poll};

    use bytes::BytesMut;
    use tokio::io::AsyncWrite;

    use super::super::tests::stream_writer;
    use super::super::{DeferredWrites, EventOffer, EventRef};
    use super::*;
    use crate::Code;
    use crate::transport::Scheme;
    use crate::wire::{Header, Packet};

    /// Records what reaches the socket: bytes, and how many writes and flushes it took.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize, usize)>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut state = self.0.lock().unwrap();
            state.0.extend_from_slice(buf);
            state.1 += 1;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
            self.0.lock().unwrap().2 += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_packets_go_out_in_one_write_and_one_flush() {
        let recorder = Recorder::default();
        let writer = stream_writer(recorder.clone());
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        for _ in 0..10 {
            conn.try_send(Packet::Pong).unwrap();
        }
        conn.shared.outbox.stop();
        let stall = Duration::from_secs(5);
        conn.shared.writer.put(writer);
        write_loop_started(outbox, idle(&conn), stall).await;
        let (bytes, writes, flushes) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, [0x90; 10]);
        assert_eq!((writes, flushes), (1, 1));
        // What was written gave its room back.
        assert_eq!(conn.shared.outbox.room(), 1 << 20);
    }

    /// A connection as the engine leaves it before anything is sent: the writer in its slot,
    /// inline writes allowed, and its writer task not started.
    fn lazily_written(recorder: &Recorder, queued: &[Packet]) -> (Conn, Arc<WriterTask>) {
        let writer = stream_writer(recorder.clone());
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        for packet in queued {
            conn.try_send(packet.clone()).unwrap();
        }
        conn.shared.writer.put(writer);
        conn.shared.outbox.allow_inline();
        let busy = idle(&conn);
        let parts = WriterParts {
            outbox,
            busy,
            stall: Duration::from_secs(5),
        };
        let task = WriterTask::waiting(&conn, parts);
        (conn, task)
    }

    /// The write loop as a started task runs it.
    fn write_loop_started(outbox: Outbox, busy: Busy, stall: Duration) -> impl Future<Output = ()> {
        let task = Arc::new(WriterTask {
            state: std::sync::Mutex::new(WriterTaskState::Started(None)),
        });
        write_loop(
            task,
            WriterParts {
                outbox,
                busy,
                stall,
            },
        )
    }

    fn started(task: &WriterTask) -> bool {
        matches!(*crate::sync::lock(&task.state), WriterTaskState::Started(_))
    }

    #[tokio::test]
    async fn a_write_of_several_packets_keeps_the_queues_room_and_a_lone_one_gives_it_back() {
        let recorder = Recorder::default();
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        conn.shared.writer.put(stream_writer(recorder.clone()));
        let writing = tokio::spawn(write_loop_started(
            outbox,
            idle(&conn),
            Duration::from_secs(5),
        ));
        let mut sent = Vec::new();
        let mut send = |packets: Vec<Packet>| {
            // Queued while the writer task waits for its turn: they go out as one batch.
            for packet in &packets {
                conn.try_send(packet.clone()).unwrap();
            }
            sent.extend(packets);
            encoded(&sent)
        };
        let written = |expected: Vec<u8>| {
            let recorder = recorder.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), async {
                    while recorder.0.lock().unwrap().0 != expected {
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .expect("the batch written");
            }
        };

        // Nothing is under way between two reads of a peer with many calls in flight; its
        // answers come a read's worth at a time, and once a write has carried several the
        // queue keeps room for the next ones.
        for first in [0, 20] {
            written(send(
                (first..first + 20).map(|seq| notify(seq, 10)).collect(),
            ))
            .await;
        }
        assert!(conn.shared.outbox.spare_slots() >= 16, "room kept");
        written(send(vec![notify(40, 10)])).await;
        assert!(
            conn.shared.outbox.spare_slots() <= super::super::outbox::KEEP,
            "room given back"
        );

        conn.shared.outbox.stop();
        task_ends(writing).await;
    }

    #[tokio::test]
    async fn the_writer_task_starts_only_when_a_packet_waits_for_it() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        assert!(!started(&task));
        // A lone packet is written by its sender, with no task to wake.
        conn.send_inline(notify(1, 10)).await.unwrap();
        assert_eq!(recorder.0.lock().unwrap().0, encoded(&[notify(1, 10)]));
        assert!(
            !started(&task),
            "a lone inline write started the writer task"
        );

        // A packet that only queues starts it, and it writes the packet.
        conn.try_send(notify(2, 10)).unwrap();
        assert!(started(&task));
        let sent = encoded(&[notify(1, 10), notify(2, 10)]);
        let written = || recorder.0.lock().unwrap().0 == sent;
        tokio::time::timeout(Duration::from_secs(10), async {
            while !written() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the queued packet written");

        // The engine takes its handle once, to wait for it as the connection ends.
        conn.shared.outbox.stop();
        let handle = task.stop(&conn).expect("the task's handle");
        assert!(task.stop(&conn).is_none());
        task_ends(handle).await;
    }

    #[tokio::test]
    async fn a_bursts_held_answers_leave_in_one_write_from_the_engine_and_no_task() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        let burst: Vec<Packet> = (1..=10).map(|n| notify(n, 10)).collect();
        for packet in &burst {
            conn.try_queue_held(packet.clone()).unwrap();
        }
        assert!(!started(&task), "a held packet woke the writer");
        assert_eq!(recorder.0.lock().unwrap().1, 0, "a held packet was written");
        assert!(
            conn.shared.outbox.room() < 1 << 20,
            "held packets hold room"
        );

        conn.write_held();
        let (bytes, writes, _) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, encoded(&burst));
        assert_eq!(writes, 1);
        assert!(!started(&task), "the burst's write started the writer task");
        assert_eq!(
            conn.shared.outbox.room(),
            1 << 20,
            "written, the room is back"
        );

        // Nothing held, nothing written.
        conn.write_held();
        assert_eq!(recorder.0.lock().unwrap().1, 1);

        conn.shared.outbox.stop();
        if let Some(handle) = task.stop(&conn) {
            task_ends(handle).await;
        }
    }

    #[tokio::test]
    async fn packets_queued_before_the_engine_started_start_the_writer_task_at_once() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[notify(1, 10), notify(2, 10)]);
        // Nothing would wake a writer for them: they were queued with nobody waiting.
        assert!(started(&task));
        conn.shared.outbox.stop();
        let handle = task.stop(&conn).expect("the task's handle");
        task_ends(handle).await;
        let sent = encoded(&[notify(1, 10), notify(2, 10)]);
        assert_eq!(recorder.0.lock().unwrap().0, sent);
    }

    #[tokio::test]
    async fn a_connection_that_never_needed_its_writer_task_closes_without_one() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        conn.try_queue_inline(notify(1, 10)).unwrap();
        assert!(!started(&task));
        // The engine's ending: the Close sent, then the writer's last turn, run by the engine.
        conn.try_queue_inline(Packet::close(Code::Ok, "bye"))
            .unwrap();
        let Finishing::Here(last_turn) = task.finish(&conn) else {
            panic!("no task runs: the engine runs the last turn");
        };
        assert_eq!(tasks_alive(), 0, "the stop started a task");
        tokio::time::timeout(Duration::from_secs(10), last_turn)
            .await
            .expect("the last turn ends once stopped");
        assert_eq!(tasks_alive(), 0);
        let sent = encoded(&[notify(1, 10), Packet::close(Code::Ok, "bye")]);
        assert_eq!(recorder.0.lock().unwrap().0, sent);
        assert!(matches!(task.finish(&conn), Finishing::Done));
        // The transport is gone, and with the parts the last turn held, nothing is left that
        // keeps the connection's shared state alive but `conn`.
        assert!(conn.shared.writer.take().writer.is_none());
        drop(task);
        assert_eq!(Arc::strong_count(&conn.shared), 1);
    }

    #[tokio::test]
    async fn a_running_writer_task_writes_the_last_turn_and_the_engine_waits_for_it() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        conn.try_send(notify(1, 10)).unwrap();
        assert!(started(&task));
        conn.try_queue_inline(Packet::close(Code::Ok, "bye"))
            .unwrap();
        let Finishing::Task(handle) = task.finish(&conn) else {
            panic!("the running task's handle");
        };
        task_ends(handle).await;
        let sent = encoded(&[notify(1, 10), Packet::close(Code::Ok, "bye")]);
        assert_eq!(recorder.0.lock().unwrap().0, sent);
        assert!(matches!(task.finish(&conn), Finishing::Done));
    }

    /// Waits, within the test's bound, for a stopped writer task to end.
    async fn task_ends(handle: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the writer task ends once stopped")
            .unwrap();
    }

    /// Tasks alive on this test's runtime (single-threaded: none runs while they are counted).
    fn tasks_alive() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// Yields until `condition` holds, within the test's bound.
    async fn until(mut condition: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !condition() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the condition within 10 s");
    }

    #[tokio::test]
    async fn a_quiet_connections_writer_task_retires_and_the_next_queued_packet_starts_another() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        let written = |packets: &[Packet]| recorder.0.lock().unwrap().0 == encoded(packets);
        // Not started: there is nothing to retire, and asking starts nothing.
        task.retire_if_waiting(&conn);
        assert!(!started(&task));
        assert_eq!(tasks_alive(), 0);

        // A queued packet starts the task; once it waits again, it is asked to retire.
        conn.try_send(notify(1, 10)).unwrap();
        until(|| written(&[notify(1, 10)]) && conn.shared.outbox.writer_waits()).await;
        assert_eq!(tasks_alive(), 1);
        task.retire_if_waiting(&conn);
        until(|| tasks_alive() == 0).await;
        assert!(!started(&task), "retired, it waits unstarted");

        // The transport stayed with the connection: a lone packet is written inline by its
        // sender, with no task, and a queued one starts a task again.
        conn.send_inline(notify(2, 10)).await.unwrap();
        assert!(written(&[notify(1, 10), notify(2, 10)]));
        assert!(!started(&task));
        conn.try_send(notify(3, 10)).unwrap();
        assert!(started(&task));
        until(|| written(&[notify(1, 10), notify(2, 10), notify(3, 10)])).await;

        // The task started last is the one the engine waits for at the end.
        conn.try_send(Packet::close(Code::Ok, "bye")).unwrap();
        let handle = task.stop(&conn).expect("the running task's handle");
        task_ends(handle).await;
        let sent = [
            notify(1, 10),
            notify(2, 10),
            notify(3, 10),
            Packet::close(Code::Ok, "bye"),
        ];
        assert!(written(&sent));
        assert!(conn.shared.writer.take().writer.is_none());
        drop(task);
        assert_eq!(Arc::strong_count(&conn.shared), 1);
    }

    #[tokio::test]
    async fn a_retired_writer_task_leaves_no_write_buffer_behind() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        let buffer = || {
            let taken = conn.shared.writer.take();
            let capacity = match &taken.writer {
                Some(writer) => writer.out.buf.capacity(),
                None => panic!("the stream writer in its slot"),
            };
            conn.shared.writer.put(taken.writer.unwrap());
            capacity
        };
        // Queued together: the task encodes them in the connection's buffer, in one write.
        let packets: Vec<_> = (0..4).map(|seq| notify(seq, 100)).collect();
        for packet in &packets {
            conn.try_send(packet.clone()).unwrap();
        }
        until(|| {
            recorder.0.lock().unwrap().0 == encoded(&packets) && conn.shared.outbox.writer_waits()
        })
        .await;
        assert!(buffer() > 0, "kept while the task runs, for its next batch");
        task.retire_if_waiting(&conn);
        until(|| tasks_alive() == 0).await;
        assert_eq!(buffer(), 0, "the burst's buffer outlived its task");
        drop(task.stop(&conn));
        until(|| tasks_alive() == 0).await;
    }

    /// Retire requests racing senders on two workers: every packet goes out once, in order,
    /// whether its sender wrote it inline, queued it for a running task, or started a new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retiring_while_senders_send_loses_and_reorders_nothing() {
        const PACKETS: u16 = 5_000;
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        let packets: Vec<Packet> = (0..PACKETS)
            .map(|seq| {
                let mut packet = notify(0, 0);
                if let Packet::Notify(notify) = &mut packet {
                    notify.payload = bytes::Bytes::copy_from_slice(&seq.to_be_bytes());
                }
                packet
            })
            .collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let retiring = tokio::spawn({
            let (conn, task, done) = (conn.clone(), task.clone(), done.clone());
            async move {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    task.retire_if_waiting(&conn);
                    tokio::task::yield_now().await;
                }
            }
        });
        let sending = tokio::spawn({
            let (conn, packets) = (conn.clone(), packets.clone());
            async move {
                for (i, packet) in packets.into_iter().enumerate() {
                    // Some inline, some queued, in runs of each, with pauses in between.
                    match i % 7 < 3 {
                        true => conn.try_queue_inline(packet).unwrap(),
                        false => conn.try_send(packet).unwrap(),
                    }
                    if i % 5 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), sending)
            .await
            .expect("every packet sent within 30 s")
            .unwrap();
        let all = encoded(&packets);
        tokio::time::timeout(Duration::from_secs(30), async {
            while recorder.0.lock().unwrap().0.len() < all.len() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("every packet written within 30 s");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        retiring.await.unwrap();
        assert!(
            recorder.0.lock().unwrap().0 == all,
            "lost, repeated or reordered"
        );
        if let Some(handle) = task.stop(&conn) {
            task_ends(handle).await;
        }
    }

    #[tokio::test]
    async fn a_writer_task_asked_to_retire_writes_what_was_queued_before_it_looked_and_stays() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        conn.try_send(notify(1, 10)).unwrap();
        until(|| conn.shared.outbox.writer_waits()).await;
        // Asked, and before it runs (this runtime has one thread) a packet is queued: with no
        // writer waiting it is not written inline, and the task takes it when it looks.
        task.retire_if_waiting(&conn);
        conn.try_queue_inline(notify(2, 10)).unwrap();
        until(|| recorder.0.lock().unwrap().0 == encoded(&[notify(1, 10), notify(2, 10)])).await;
        until(|| conn.shared.outbox.writer_waits()).await;
        assert!(started(&task), "not quiet: the task goes on");
        assert_eq!(tasks_alive(), 1);
        drop(task.stop(&conn));
        until(|| tasks_alive() == 0).await;
    }
    fn idle(conn: &Conn) -> Busy {
        Busy {
            conn: conn.clone(),
            handling: Arc::new(InFlight::new(16)),
        }
    }

    /// Ten answers on a connection over `scheme`: the first wakes the writer, the other nine
    /// are ready to run right behind it (on this single-threaded runtime, in that order).
    /// Returns the writes they took.
    async fn writes_for_ten_answers(scheme: Scheme, handlers_running: usize) -> usize {
        let recorder = Recorder::default();
        let writer = stream_writer(recorder.clone());
        let mut parts = super::super::tests::parts(1 << 20);
        parts.scheme = scheme;
        let (conn, outbox) = Conn::new(parts);
        let busy = idle(&conn);
        let running = busy.handling.reserve(handlers_running).unwrap();
        let stall = Duration::from_secs(5);
        conn.shared.writer.put(writer);
        let writer_task = tokio::spawn(write_loop_started(outbox, busy, stall));
        // The writer waits for its first packet.
        tokio::task::yield_now().await;
        conn.try_send(Packet::Pong).unwrap();
        let answers: Vec<_> = (0..9)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.try_send(Packet::Pong).unwrap() })
            })
            .collect();
        for answer in answers {
            answer.await.unwrap();
        }
        drop(running);
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
        let (bytes, writes, _) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, [0x90; 10]);
        writes
    }

    #[tokio::test]
    async fn with_requests_being_handled_the_writer_lets_their_answers_join_the_write() {
        assert_eq!(writes_for_ten_answers(Scheme::Tcp, 10).await, 1);
    }

    #[tokio::test]
    async fn over_quic_the_writer_does_not_step_aside_as_quinn_gathers_the_writes() {
        assert_eq!(writes_for_ten_answers(Scheme::Quic, 10).await, 2);
    }

    /// Ten answers, as above, but nine of them come from tasks that the ready tasks start:
    /// two hops from the packet that woke the writer (a handler that answers through a task of
    /// its own, say). Stepping aside, the writer waits until this worker has run all that is
    /// ready, the tasks made ready meanwhile too, and writes the ten at once. A writer that
    /// woke itself to step aside ran again right after the first hop, with nothing queued yet,
    /// and took two writes; that wake-up also made tokio wake a parked worker for it, on every
    /// write of a client with calls in flight.
    #[tokio::test]
    async fn the_writer_steps_aside_until_every_ready_task_has_run() {
        let recorder = Recorder::default();
        let writer = stream_writer(recorder.clone());
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        let busy = idle(&conn);
        let running = busy.handling.reserve(10).unwrap();
        conn.shared.writer.put(writer);
        let writer_task = tokio::spawn(write_loop_started(outbox, busy, Duration::from_secs(5)));
        // The writer waits for its first packet.
        tokio::task::yield_now().await;
        conn.try_send(Packet::Pong).unwrap();
        let (second_hops, mut started) = tokio::sync::mpsc::unbounded_channel();
        let first_hops: Vec<_> = (0..9)
            .map(|_| {
                let (conn, second_hops) = (conn.clone(), second_hops.clone());
                tokio::spawn(async move {
                    let second_hop =
                        tokio::spawn(async move { conn.try_send(Packet::Pong).unwrap() });
                    second_hops.send(second_hop).unwrap();
                })
            })
            .collect();
        for first_hop in first_hops {
            first_hop.await.unwrap();
        }
        for _ in 0..9 {
            started.recv().await.unwrap().await.unwrap();
        }
        drop(running);
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
        let (bytes, writes, _) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, [0x90; 10]);
        assert_eq!(writes, 1);
    }

    #[tokio::test]
    async fn with_one_request_being_handled_its_answer_leaves_at_once() {
        assert_eq!(writes_for_ten_answers(Scheme::Tcp, 1).await, 2);
    }

    /// Takes `room` bytes, then waits until the test gives it more.
    #[derive(Clone, Default)]
    struct Throttled(Arc<Mutex<ThrottledState>>);

    #[derive(Default)]
    struct ThrottledState {
        bytes: Vec<u8>,
        room: usize,
        waiting: Option<std::task::Waker>,
    }

    impl Throttled {
        fn give(&self, room: usize) {
            let mut state = self.0.lock().unwrap();
            state.room += room;
            if let Some(waker) = state.waiting.take() {
                waker.wake();
            }
        }

        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().bytes.clone()
        }
    }

    impl AsyncWrite for Throttled {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut state = self.0.lock().unwrap();
            if state.room == 0 {
                state.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(state.room);
            state.room -= n;
            state.bytes.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn notify(seq: u8, len: usize) -> Packet {
        Packet::Notify(crate::wire::Notify {
            action: crate::wire::Action::Id(1),
            header: Header::new(),
            payload: bytes::Bytes::from(vec![seq; len]),
        })
    }

    fn encoded(packets: &[Packet]) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        for packet in packets {
            packet.encode_stream(&mut bytes);
        }
        bytes.to_vec()
    }

    /// A connection whose writer task runs on `io` and waits for its first packet.
    async fn waiting_writer(
        io: impl AsyncWrite + Send + 'static,
        budget: usize,
    ) -> (Conn, tokio::task::JoinHandle<()>) {
        let (conn, task, _) = counted_waiting_writer(io, budget).await;
        (conn, task)
    }

    /// [`waiting_writer`], with the number of times its task has been polled.
    async fn counted_waiting_writer(
        io: impl AsyncWrite + Send + 'static,
        budget: usize,
    ) -> (
        Conn,
        tokio::task::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        counted_waiting_writer_of(io, super::super::tests::parts(budget)).await
    }

    /// [`counted_waiting_writer`] of a connection made of `parts`.
    async fn counted_waiting_writer_of(
        io: impl AsyncWrite + Send + 'static,
        parts: super::super::ConnParts,
    ) -> (
        Conn,
        tokio::task::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let writer = stream_writer(io);
        let (conn, outbox) = Conn::new(parts);
        conn.shared.outbox.allow_inline();
        let stall = Duration::from_secs(5);
        let busy = idle(&conn);
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        conn.shared.writer.put(writer);
        let mut writing = Box::pin(write_loop_started(outbox, busy, stall));
        let task = tokio::spawn(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            writing.as_mut().poll(cx)
        }));
        while !conn.shared.outbox.writer_waits() {
            tokio::task::yield_now().await;
        }
        (conn, task, polls)
    }

    #[tokio::test]
    async fn a_lone_packet_is_written_by_its_sender_without_waking_the_writer() {
        let recorder = Recorder::default();
        let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
        conn.send_inline(notify(1, 10)).await.unwrap();
        // On the wire before this task has let any other run.
        assert_eq!(recorder.0.lock().unwrap().0, encoded(&[notify(1, 10)]));
        assert_eq!(conn.shared.outbox.room(), 1 << 20);
        assert!(
            conn.shared.outbox.writer_waits(),
            "the writer was not woken"
        );
        // With a packet queued, the next one queues behind it instead.
        conn.try_send(notify(2, 10)).unwrap();
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
        let written = recorder.0.lock().unwrap().0.clone();
        assert_eq!(written, encoded(&[notify(1, 10), notify(2, 10)]));
    }

    #[tokio::test]
    async fn what_an_inline_write_leaves_goes_out_before_what_was_queued_after_it() {
        let io = Throttled::default();
        let (first, second, third) = (notify(1, 1000), notify(2, 1000), notify(3, 1000));
        let cost = |p: &Packet| super::super::budget::queue_cost(p, usize::MAX);
        // Room for the first two packets only.
        let budget = cost(&first) + cost(&second);
        let (conn, writer_task) = waiting_writer(io.clone(), budget).await;
        io.give(10);
        conn.send_inline(first.clone()).await.unwrap();
        assert_eq!(
            io.bytes().len(),
            10,
            "the sender wrote what the socket took"
        );
        conn.try_send(second.clone()).unwrap();
        // The first packet's bytes are not all out: its room is still taken.
        let full = conn.try_send(third.clone()).unwrap_err();
        assert_eq!(full.code(), Code::TooManyRequests);
        io.give(usize::MAX / 2);
        tokio::time::timeout(Duration::from_secs(5), async {
            while io.bytes().len() < encoded(&[first.clone(), second.clone()]).len() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(io.bytes(), encoded(&[first.clone(), second.clone()]));
        // Written: the room came back, also that of the packet written inline.
        tokio::time::timeout(Duration::from_secs(5), async {
            while conn.shared.outbox.room() < budget {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        conn.try_send(third.clone()).unwrap();
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
        assert_eq!(io.bytes(), encoded(&[first, second, third]));
    }

    /// A broadcast's writes, with `packet` as its event for the content type of `conn`.
    fn broadcast_of(conn: &Conn, packet: Packet) -> (DeferredWrites, EventRef) {
        let mut writes = DeferredWrites::default();
        let event = writes.add_event(conn.codec(), packet);
        (writes, event)
    }

    /// Offers `event` to `conn`, whose writer waits with nothing queued: its queue hands the
    /// event back to `writes`.
    fn hand_back(conn: &Conn, writes: &mut DeferredWrites, event: EventRef) {
        assert!(
            matches!(
                conn.offer_event_to_write(event, writes),
                EventOffer::HandedBack
            ),
            "the idle writer's queue did not hand the event back"
        );
    }

    #[tokio::test]
    async fn an_event_handed_back_to_a_broadcast_leaves_before_what_was_queued_after_it() {
        let recorder = Recorder::default();
        let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
        let (mut writes, first) = broadcast_of(&conn, notify(1, 10));
        hand_back(&conn, &mut writes, first);
        // While the event waits for the broadcast to write it, the next one queues behind
        // it, and a direct send too: the writer takes nothing meanwhile.
        let (mut next_broadcast, next) = broadcast_of(&conn, notify(2, 10));
        assert!(matches!(
            conn.offer_event_to_write(next, &mut next_broadcast),
            EventOffer::Queued
        ));
        next_broadcast.finish();
        conn.try_send(notify(3, 10)).unwrap();
        tokio::task::yield_now().await;
        assert!(recorder.0.lock().unwrap().0.is_empty());
        writes.finish();
        // What queued behind the event joined its write: one write, one flush.
        assert_eq!(
            recorder.0.lock().unwrap().clone(),
            (
                encoded(&[notify(1, 10), notify(2, 10), notify(3, 10)]),
                1,
                1
            )
        );
        assert_eq!(conn.shared.outbox.room(), 1 << 20, "all room came back");
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
    }

    #[tokio::test]
    async fn an_event_handed_back_and_never_written_goes_out_through_the_writer() {
        let recorder = Recorder::default();
        let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
        let (mut writes, event) = broadcast_of(&conn, notify(1, 10));
        hand_back(&conn, &mut writes, event);
        conn.try_send(notify(2, 10)).unwrap();
        // A broadcast's writes dropped before they were made (its chunk's task dropped as
        // the runtime shuts down, say).
        drop(writes);
        conn.shared.outbox.stop();
        tokio::time::timeout(Duration::from_secs(5), writer_task)
            .await
            .expect("the writer was not left waiting for the dropped write")
            .unwrap();
        let written = recorder.0.lock().unwrap().0.clone();
        assert_eq!(written, encoded(&[notify(1, 10), notify(2, 10)]));
        assert_eq!(conn.shared.outbox.room(), 1 << 20, "all room came back");
    }

    /// `n` connections whose writers wait, each writing into its own recorder.
    async fn waiting_writers(n: usize) -> Vec<(Conn, tokio::task::JoinHandle<()>, Recorder)> {
        let mut conns = Vec::new();
        for _ in 0..n {
            let recorder = Recorder::default();
            let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
            conns.push((conn, writer_task, recorder));
        }
        conns
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_chunk_of_handed_back_events_is_written_before_the_broadcast_ends() {
        let conns = waiting_writers(64).await;
        let (mut gathering, event) = broadcast_of(&conns[0].0, notify(9, 20));
        for (conn, _, _) in &conns {
            hand_back(conn, &mut gathering, event);
        }
        // The broadcast has not finished: the chunk left when it was full.
        let want = encoded(&[notify(9, 20)]);
        tokio::time::timeout(Duration::from_secs(10), async {
            for (_, _, recorder) in &conns {
                while recorder.0.lock().unwrap().0 != want {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .expect("the full chunk was written while the broadcast went on");
        gathering.finish();
        for (conn, writer_task, _) in conns {
            conn.shared.outbox.stop();
            writer_task.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_without_a_runtime_writes_every_event_where_it_finishes() {
        let conns = waiting_writers(130).await;
        let targets: Vec<Conn> = conns.iter().map(|(conn, _, _)| conn.clone()).collect();
        let recorders: Vec<_> = conns.iter().map(|(_, _, r)| r.clone()).collect();
        let want = encoded(&[notify(3, 20)]);
        // A thread of its own has no runtime to spawn chunks on.
        std::thread::spawn(move || {
            let (mut gathering, event) = broadcast_of(&targets[0], notify(3, 20));
            for conn in &targets {
                hand_back(conn, &mut gathering, event);
            }
            let written = |r: &Recorder| r.0.lock().unwrap().0.clone();
            assert!(recorders.iter().all(|r| written(r).is_empty()));
            gathering.finish();
            assert!(recorders.iter().all(|r| written(r) == want));
        })
        .join()
        .unwrap();
        for (conn, writer_task, _) in conns {
            assert_eq!(conn.shared.outbox.room(), 1 << 20, "all room came back");
            conn.shared.outbox.stop();
            writer_task.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_writes_handed_back_events_in_chunks_without_waking_writers() {
        let mut conns = Vec::new();
        for _ in 0..300 {
            let recorder = Recorder::default();
            let (conn, writer_task, polls) =
                counted_waiting_writer(recorder.clone(), 1 << 20).await;
            conns.push((conn, writer_task, recorder, polls));
        }
        let polled_before: Vec<usize> = conns
            .iter()
            .map(|(_, _, _, polls)| polls.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        let (mut writes, event) = broadcast_of(&conns[0].0, notify(7, 20));
        for (conn, _, _, _) in &conns {
            hand_back(conn, &mut writes, event);
        }
        writes.finish();
        let want = encoded(&[notify(7, 20)]);
        tokio::time::timeout(Duration::from_secs(10), async {
            for (conn, _, recorder, _) in &conns {
                while recorder.0.lock().unwrap().0 != want || conn.shared.outbox.room() < 1 << 20 {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .expect("every event written and its room given back");
        for ((conn, writer_task, recorder, polls), before) in conns.into_iter().zip(polled_before) {
            assert_eq!(
                polls.load(std::sync::atomic::Ordering::SeqCst),
                before,
                "the writer task was not woken for a handed-back event"
            );
            assert_eq!(recorder.0.lock().unwrap().1, 1, "one write");
            conn.shared.outbox.stop();
            writer_task.await.unwrap();
        }
    }

    #[cfg(feature = "json")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_of_a_broadcast_gets_the_packet_of_its_content_type() {
        // Every third connection speaks JSON: each chunk of writes names both packets.
        let mut conns = Vec::new();
        for i in 0..150 {
            let mut parts = super::super::tests::parts(1 << 20);
            if i % 3 == 0 {
                parts.codec = crate::Codec::JSON;
            }
            let recorder = Recorder::default();
            let (conn, writer_task, _) = counted_waiting_writer_of(recorder.clone(), parts).await;
            conns.push((conn, writer_task, recorder));
        }
        let packet_for = |codec: &crate::Codec| match codec.content_type() {
            "application/json" => notify(4, 30),
            _ => notify(5, 20),
        };
        let mut writes = DeferredWrites::default();
        for (conn, _, _) in &conns {
            let codec = conn.codec();
            let event = match writes.event(codec) {
                Some(event) => event,
                None => writes.add_event(codec, packet_for(codec)),
            };
            hand_back(conn, &mut writes, event);
        }
        assert_eq!(
            writes.event(&crate::Codec::PROTOBUF),
            writes.event(conns[1].0.codec()),
            "one packet per content type"
        );
        writes.finish();
        tokio::time::timeout(Duration::from_secs(10), async {
            for (conn, _, recorder) in &conns {
                let want = encoded(&[packet_for(conn.codec())]);
                while recorder.0.lock().unwrap().0 != want || conn.shared.outbox.room() < 1 << 20 {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .expect("every connection got its content type's event, and its room back");
        for (conn, writer_task, _) in conns {
            conn.shared.outbox.stop();
            writer_task.await.unwrap();
        }
    }
}
