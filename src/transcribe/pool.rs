//! Transcription worker pool (a driver: it owns threads): N workers, each with its own
//! [`Transcriber`], take jobs from one bounded queue and send results back on a channel.
//!
//! The pipeline core never waits on it: jobs are submitted without blocking (a full queue is
//! refused, and the pipeline mutes that window when its deadline passes). Dropping the pool
//! closes the queue and joins the workers.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::redact::pipeline::{Job, JobId};
use crate::transcribe::{TranscribeError, Transcriber, Word};

pub struct Done {
    pub id: JobId,
    pub channel: u8,
    pub audio_ms: u64,
    /// Wall time the transcriber took (for real-time factor metrics).
    pub took: Duration,
    pub result: Result<Vec<Word>, TranscribeError>,
}

pub struct Pool {
    tx: Option<SyncSender<Job>>,
    rx: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
}

/// Default worker count: every core but one, which is left for the live media relay.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get().saturating_sub(1)).unwrap_or(1).max(1)
}

impl Pool {
    /// Starts one worker per transcriber; `queue` jobs may wait. Fails only when the OS refuses
    /// a thread.
    pub fn new(transcribers: Vec<Box<dyn Transcriber>>, queue: usize) -> std::io::Result<Pool> {
        let (tx, jobs) = mpsc::sync_channel::<Job>(queue.max(1));
        let jobs = Arc::new(Mutex::new(jobs));
        let (done_tx, rx) = mpsc::channel();
        let mut workers = Vec::new();
        for (i, mut t) in transcribers.into_iter().enumerate() {
            let jobs = Arc::clone(&jobs);
            let done_tx = done_tx.clone();
            let handle = std::thread::Builder::new().name(format!("transcribe-{i}")).spawn(move || loop {
                let job = match jobs.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                #[allow(clippy::disallowed_methods)] // a driver thread: measures its own work time
                let t0 = std::time::Instant::now();
                let result = t.transcribe(&job.audio);
                let done = Done {
                    id: job.id,
                    channel: job.channel,
                    audio_ms: job.audio.len() as u64 / 16,
                    took: t0.elapsed(),
                    result,
                };
                if done_tx.send(done).is_err() {
                    return;
                }
            })?;
            workers.push(handle);
        }
        Ok(Pool { tx: Some(tx), rx, workers })
    }

    /// Queues a job without blocking; gives it back when the queue is full or the pool stopped.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match self.tx.as_ref() {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
            }),
            None => Err(job),
        }
    }

    /// Waits up to `timeout` for a result.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Done> {
        self.rx.recv_timeout(timeout).ok()
    }

    pub fn try_recv(&self) -> Option<Done> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
