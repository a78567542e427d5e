//! Where log lines go: a queue in memory, bounded in bytes, and one thread that writes it to
//! stdout. Logging never waits: when stdout does not keep up (a pipe nobody reads, a stalled
//! collector) and the queue is full, a line is dropped and counted (`log_lines_dropped_total`),
//! and the writer says how many once it has caught up. tracing-appender's writer bounds its
//! queue in lines, whatever their size, and when full either blocks every thread that logs
//! (the Tokio workers included) or drops without a metric: hence this small one.

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use super::throttle::Throttle;

/// Bytes of lines waiting for the writer thread; past this, new lines are dropped. About 30,000
/// request lines: seconds of the benchmark's request rate, while a stalled stdout costs at
/// most this much memory.
const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Dropped lines are reported at most this often.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// How long the writer, woken by a line, lets more lines gather before it writes them: a line
/// reaches stdout at most this much later.
const BATCH_WINDOW: Duration = Duration::from_millis(1);
/// How long the last lines may take to be written at exit.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

enum Message {
    Line(Vec<u8>),
    Shutdown,
}

struct Queue {
    sender: Sender<Message>,
    queued_bytes: AtomicUsize,
    dropped: AtomicU64,
}

/// The [`MakeWriter`] the subscriber writes each formatted line to.
#[derive(Clone)]
pub struct LogWriter(Arc<Queue>);

/// Keeps the writer thread; dropping it writes out what is queued (for at most a second).
pub struct LogGuard {
    queue: Arc<Queue>,
    /// Closed by the writer thread when it ends.
    done: Receiver<()>,
}

/// Starts the writer thread over `out`.
pub fn spawn(out: impl Write + Send + 'static) -> io::Result<(LogWriter, LogGuard)> {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let queue = Arc::new(Queue {
        sender,
        queued_bytes: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
    });
    let (done_sender, done) = crossbeam_channel::bounded(1);
    std::thread::Builder::new().name("log-writer".to_owned()).spawn({
        let queue = queue.clone();
        move || {
            write_lines(&queue, &receiver, out);
            drop(done_sender);
        }
    })?;
    let guard = LogGuard {
        queue: queue.clone(),
        done,
    };
    Ok((LogWriter(queue), guard))
}

/// The writer thread: writes lines in batches, flushing whenever the queue is empty, so one
/// write(2) carries many lines. Once caught up it sleeps until the next line, then waits
/// [`BATCH_WINDOW`] for the lines that follow it: without that pause, a server logging a few
/// thousand lines a second woke the writer and wrote once per line, on the cores serving
/// requests (the pause gained a create 0-4 %: bench/RESULTS.md). crossbeam's channel, like
/// tracing-appender's: a send wakes the receiver only while it sleeps in `recv` (std's `mpsc`,
/// tried first, woke it per line: 130,000 times a second).
fn write_lines(queue: &Queue, receiver: &Receiver<Message>, out: impl Write) {
    let mut out = io::BufWriter::new(out);
    let mut reported = 0;
    let report = Throttle::new(DROP_REPORT_INTERVAL);
    loop {
        let message = match receiver.try_recv() {
            Ok(message) => message,
            Err(TryRecvError::Empty) => {
                let _ = out.flush();
                // Caught up: a good moment to say what was lost (the line itself queues as usual).
                let dropped = queue.dropped.load(Ordering::Relaxed);
                if dropped > reported && report.due().is_some() {
                    tracing::warn!(
                        dropped_total = dropped,
                        "log lines were dropped: stdout did not keep up (log_lines_dropped_total counts them)"
                    );
                    reported = dropped;
                }
                let Ok(message) = receiver.recv() else { break };
                std::thread::sleep(BATCH_WINDOW);
                message
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match message {
            Message::Line(line) => {
                let _ = out.write_all(&line);
                queue.queued_bytes.fetch_sub(line.len(), Ordering::Relaxed);
            }
            Message::Shutdown => break,
        }
    }
    let _ = out.flush();
}

impl Queue {
    fn push(&self, line: &[u8]) {
        let size = line.len();
        if self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("log_lines_dropped_total").increment(1);
            return;
        }
        if self.sender.send(Message::Line(line.to_vec())).is_err() {
            // The writer thread is gone (exit): nothing will write the line.
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

/// One line's writer: tracing-subscriber formats a whole line, then writes it in one call.
pub struct LineWriter<'a>(&'a Queue);

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter(&self.0)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let _ = self.queue.sender.send(Message::Shutdown);
        // Until the thread has written what was queued, but a stdout nobody reads must not
        // hold up the exit.
        let _ = self.done.recv_timeout(FLUSH_AT_EXIT);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A sink that takes nothing until it is opened, like a pipe nobody reads.
    struct Blocked {
        written: Arc<Mutex<Vec<u8>>>,
        open: Arc<AtomicBool>,
    }

    impl Write for Blocked {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            while !self.open.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Ok(mut written) = self.written.lock() {
                written.extend_from_slice(data);
            }
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking_and_a_drained_one_takes_lines_again() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicBool::new(false));
        let sink = Blocked {
            written: written.clone(),
            open: open.clone(),
        };
        let (writer, guard) = spawn(sink).expect("the writer thread starts");
        let line = vec![b'x'; 64 * 1024];
        let lines = MAX_QUEUED_BYTES / line.len() + 10;
        // Every call returns at once although nothing is written meanwhile.
        for _ in 0..lines {
            let _ = writer.make_writer().write(&line);
        }
        assert!(
            writer.0.dropped.load(Ordering::Relaxed) >= 9,
            "dropped {}",
            writer.0.dropped.load(Ordering::Relaxed)
        );
        assert!(writer.0.queued_bytes.load(Ordering::Relaxed) <= MAX_QUEUED_BYTES);
        open.store(true, Ordering::Release);
        // Drained, the queue takes lines again.
        let drained = (0..2000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            writer.0.queued_bytes.load(Ordering::Relaxed) == 0
        });
        assert!(drained, "the queue drained once stdout was read");
        let dropped = writer.0.dropped.load(Ordering::Relaxed);
        let _ = writer.make_writer().write(b"after\n");
        assert_eq!(writer.0.dropped.load(Ordering::Relaxed), dropped);
        drop(guard);
        let all = written.lock().map(|w| w.clone()).unwrap_or_default();
        assert!(all.ends_with(b"after\n"), "the line logged after the drops was written");
        assert!(all.len() <= MAX_QUEUED_BYTES + 64 * 1024 + 6);
    }
}
