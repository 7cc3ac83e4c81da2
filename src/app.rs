//! Wiring: builds callveil's components from validated [`Settings`], starts the network drivers
//! and the `/metrics` server, and stops them on shutdown.
//!
//! One [`Metrics`] registry is built here and handed down; the proxy gets the addresses the
//! listeners actually bound (port 0 resolved). Media is anchored by [`Anchor`] over the relay
//! shards of [`MediaDriver`], which are stopped after the SIP driver. With `recording.enabled`,
//! the recording path (vault recorder + [`RecordingService`]) is started first: the proxy sends it
//! call events, it sends the proxy's core task commands (release a held INVITE, open a tap, play
//! a prompt), and the relay feeds it tap frames; none of these channels can make the live path
//! wait. This module does not parse configuration, install the tracing subscriber or handle
//! signals itself: [`run`] takes the shutdown future as a parameter so tests (and `main`, with
//! [`shutdown_signal`]) decide when to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Endpoint, Settings};
use crate::media::anchor::{Anchor, AnchorConfig, TapOpener};
use crate::media::relay::RelayConfig;
use crate::metrics::Metrics;
use crate::net::metrics_http::MetricsServer;
use crate::net::rtp::{MediaDriver, MediaShutdown, ShardOptions};
use crate::net::{Driver, Listeners, NetConfig};
use crate::recording::driver::RecordingService;
use crate::sip::events::{CallCommand, CallEvent};
use crate::sip::proxy::{Proxy, ProxyConfig};
use crate::vault::recorder::Recorder;

/// A started callveil: SIP drivers and the metrics endpoint are serving.
pub struct Running {
    driver: Driver,
    media: Option<MediaShutdown>,
    tap_opener: TapOpener,
    metrics_server: Option<MetricsServer>,
    metrics: Arc<Metrics>,
    commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
    recording: Option<RecordingService>,
}

impl Running {
    /// The SIP endpoints actually bound, in configuration order.
    pub fn sip_endpoints(&self) -> &[Endpoint] {
        self.driver.endpoints()
    }

    /// The bound `/metrics` address, or `None` when `metrics.listen` is empty.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(MetricsServer::local_addr)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Opens recording taps by Call-ID (for the recording path, once recording is permitted).
    pub fn tap_opener(&self) -> TapOpener {
        self.tap_opener.clone()
    }

    /// Sends commands (release a held INVITE, end a call, media actions) to the proxy's core task.
    pub fn call_commands(&self) -> tokio::sync::mpsc::UnboundedSender<CallCommand> {
        self.commands.clone()
    }

    /// Closes every socket and waits for the drivers to end.
    pub async fn stop(self) {
        if let Some(m) = self.metrics_server {
            m.stop().await;
        }
        self.driver.stop().await;
        if let Some(service) = self.recording {
            // finishes open recordings (bounded by the redaction deadline) off the async workers
            let _ = tokio::task::spawn_blocking(move || service.stop()).await;
        }
        if let Some(media) = self.media {
            // joining threads that exit on one wake-up: quick, but off the runtime's workers
            let _ = tokio::task::spawn_blocking(move || media.stop()).await;
        }
    }
}

/// The relay shards and the anchor the proxy uses, from `[media]`.
#[allow(clippy::disallowed_methods)] // the anchor's clock starts here; the proxy advances it
fn media(settings: &Settings, metrics: &Metrics) -> anyhow::Result<(Anchor<MediaDriver>, MediaShutdown)> {
    let m = &settings.raw.media;
    let relay = RelayConfig {
        inactivity: Duration::from_secs(m.inactivity_timeout_s),
        hold_timeout: Duration::from_secs(m.hold_timeout_s),
        flood_pps: m.flood_pps,
        flood_burst: (m.flood_pps / 5).max(50),
        ..RelayConfig::default()
    };
    let shards = match m.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let options = ShardOptions { busy_poll: Duration::from_micros(m.busy_poll_us) };
    let (driver, shutdown) =
        MediaDriver::start_with(settings.media_bind, shards, relay, metrics.media.clone(), options)
            .context("starting the media relay")?;
    let config = AnchorConfig {
        advertise: settings.media_advertise,
        ports: settings.media_ports,
        quarantine: Duration::from_secs(m.quarantine_s),
        // validated in config: one of same, plain, sdes
        srtp: [m.srtp_to_caller.parse().unwrap_or_default(), m.srtp_to_callee.parse().unwrap_or_default()],
    };
    Ok((Anchor::new(Instant::now(), config, driver, metrics.media.clone()), shutdown))
}

/// Where the proxy's [`CallEvent`]s go.
enum Events {
    /// Nowhere: signaling and media only (recording disabled).
    None,
    /// To a caller-supplied channel (tests of the proxy's events).
    To(std::sync::mpsc::Sender<CallEvent>),
    /// To callveil's own recording path (consent gate, redaction, vault).
    Recording,
}

/// Binds and starts everything, then returns. Must run inside a Tokio runtime. With
/// `recording.enabled` this includes the recording path: the vault (recovering recordings a crash
/// left open), the Whisper pool and the consent gate, fed by the proxy's call events and the
/// media taps.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let events = if settings.raw.recording.enabled { Events::Recording } else { Events::None };
    start_inner(settings, events).await
}

/// Signaling and media only, with the proxy's [`CallEvent`]s sent to `events` instead of a
/// recording path (for tests of what the proxy reports).
pub async fn start_with(
    settings: Settings,
    events: Option<std::sync::mpsc::Sender<CallEvent>>,
) -> anyhow::Result<Running> {
    start_inner(settings, events.map_or(Events::None, Events::To)).await
}

/// The recording path: the vault's recorder and the service thread that owns the consent gates
/// and redaction pipelines. Blocking work (opening SQLite, loading the model), so it runs on a
/// blocking thread.
async fn recording_path(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
) -> anyhow::Result<(RecordingService, std::sync::mpsc::Sender<CallEvent>)> {
    let settings = settings.clone();
    let metrics = metrics.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread, not `spawn_blocking`: the vault runs its own runtime and refuses to start
    // on a thread that belongs to another one.
    std::thread::Builder::new()
        .name("recording-start".into())
        .spawn(move || {
            let started = (|| {
                #[allow(clippy::disallowed_methods)] // the vault's wall clock: a driver, like the relay's
                let clock: crate::vault::recorder::Clock = Box::new(std::time::SystemTime::now);
                let (recorder, recovered) = Recorder::from_settings(&settings, metrics.vault.clone(), clock)
                    .context("opening the recording vault")?;
                if !recovered.is_empty() {
                    tracing::warn!(
                        count = recovered.len(),
                        "recordings left open by a crash were finalised as truncated"
                    );
                }
                RecordingService::start(&settings, &metrics, commands, Box::new(recorder))
                    .context("starting the recording path")
            })();
            let _ = tx.send(started);
        })
        .context("starting the recording path")?;
    rx.await.context("starting the recording path")?
}

async fn start_inner(settings: Settings, events: Events) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let listeners = Listeners::bind(&settings.sip_listen, NetConfig::from_settings(&settings))
        .await
        .context("binding the SIP listeners")?;
    let bound = listeners.endpoints().to_vec();
    let (commands, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let (recording, events) = match events {
        Events::None => (None, None),
        Events::To(tx) => (None, Some(tx)),
        Events::Recording => {
            let (service, tx) = recording_path(&settings, &metrics, commands.clone()).await?;
            (Some(service), Some(tx))
        }
    };
    let (anchor, media_shutdown) = media(&settings, &metrics)?;
    let tap_opener = anchor.tap_opener();
    let mut proxy =
        Proxy::new(ProxyConfig::from_settings(&settings, bound.clone()), metrics.sip.clone(), Box::new(anchor));
    if let Some(tx) = events {
        proxy.set_events(tx);
    }
    let api = recording.as_ref().map(RecordingService::consent_api);
    // Bound before the SIP driver starts, so a taken metrics port leaves nothing running.
    let metrics_server = match settings.metrics_listen {
        Some(addr) => match MetricsServer::start_with_api(addr, metrics.clone(), api).await {
            Ok(m) => Some(m),
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || media_shutdown.stop()).await;
                return Err(e).context("starting /metrics");
            }
        },
        None => None,
    };
    let driver = listeners.spawn(proxy, metrics.sip.clone(), Some(commands_rx));
    for ep in &bound {
        tracing::info!(listen = %ep, "SIP listening");
    }
    if let Some(m) = &metrics_server {
        tracing::info!(listen = %m.local_addr(), "metrics at http://{}/metrics", m.local_addr());
    }
    Ok(Running { driver, media: Some(media_shutdown), tap_opener, metrics_server, metrics, commands, recording })
}

/// Runs until `shutdown` resolves, then stops cleanly. Returns an error if binding fails or a
/// driver dies on its own.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut running = start(settings).await?;
    let failed = tokio::select! {
        _ = shutdown => None,
        e = running.driver.failed() => Some(e),
    };
    tracing::info!("shutting down");
    running.stop().await;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// A future that resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives while [`run`] is still
/// binding is not lost to the default action (terminating without cleanup). Must be called inside
/// a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (int, term) => {
                    if let Some(e) = int.err().or(term.err()) {
                        tracing::warn!(error = %e, "cannot install signal handlers; stopping on Ctrl-C only");
                    }
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
