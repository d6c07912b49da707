//! The Prometheus recorder of the helper: the exporter's recorder for
//! everything, except the breaker's own families, which are kept and
//! rendered by a store of their own (see the [`exporter`](super) docs).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::error::{ErrorKind, ExporterError};
use super::histogram::NativeConfig;
use super::store::{self, Kind, Store};
use super::{prometheus_builder, DURATION_BUCKETS, RECOVERY_BUCKETS};
use crate::metrics::is_breaker_family;
use crate::Clock;

/// How long the series of a breaker that is gone (an evicted key, a dropped
/// layer) stay in the exposition: 5 minutes.
pub const DEFAULT_SERIES_EXPIRY: Duration = Duration::from_secs(300);

/// The longest [`RecorderBuilder::series_expiry`]: 1 day.
pub const MAX_SERIES_EXPIRY: Duration = Duration::from_secs(86_400);

/// A [`metrics::Recorder`] for Prometheus: the breaker's families in a store
/// of their own, every other metric in the wrapped
/// [`PrometheusRecorder`].
///
/// The breaker's series are rendered at a cost per line that does not
/// depend on their labels or on the number of services, and leave the
/// exposition a bounded time after their breaker is gone (see
/// [`RecorderBuilder::series_expiry`]). Everything else is the exporter's,
/// rendered by it as before.
///
/// Wrapping a recorder you build yourself is one line:
///
/// ```
/// use metrics_exporter_prometheus::PrometheusBuilder;
/// use tower_breaker::exporter::BreakerRecorder;
///
/// let recorder = BreakerRecorder::wrap(PrometheusBuilder::new().build_recorder());
/// let handle = recorder.handle(); // render() for your own endpoint
/// // metrics::set_global_recorder(recorder)?;
/// # let _ = handle.render();
/// ```
pub struct BreakerRecorder {
    prometheus: PrometheusRecorder,
    store: Arc<Store>,
}

impl fmt::Debug for BreakerRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRecorder")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Renders what a [`BreakerRecorder`] (or a plain [`PrometheusRecorder`])
/// holds; cheap to clone.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    store: Option<Arc<Store>>,
}

impl fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsHandle")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl From<PrometheusHandle> for MetricsHandle {
    /// A handle on a plain Prometheus recorder: rendered by the exporter
    /// alone, with no native histograms and no expiry of gone breakers'
    /// series.
    fn from(prometheus: PrometheusHandle) -> Self {
        MetricsHandle {
            prometheus,
            store: None,
        }
    }
}

impl MetricsHandle {
    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = self.prometheus.render();
        if let Some(store) = &self.store {
            store.render(&mut text);
        }
        text
    }

    /// What `scope` may see, as the metrics endpoint serves it to a scoped
    /// credential: only the breaker's families, in the scope's view, the
    /// redacted ids keyed with `redaction_key`. The same text as
    /// [`Scope::apply`](super::Scope::apply) over [`render`](Self::render),
    /// made from the series themselves at about the cost of a render.
    pub fn render_scoped(&self, scope: &super::Scope, redaction_key: &[u8]) -> String {
        self.render_scoped_with(scope, &super::scope::Redactor::with_secret(redaction_key))
    }

    pub(crate) fn render_scoped_with(
        &self,
        scope: &super::Scope,
        redactor: &super::scope::Redactor,
    ) -> String {
        match &self.store {
            Some(store) if !scope.is_everything() => {
                let mut out = String::new();
                store.render_scoped(&mut out, scope, redactor);
                out
            }
            _ => {
                let text = self.render();
                super::scope::render(&text, scope, redactor).unwrap_or_else(|err| {
                    tracing::error!(error = %err, "could not parse the exposition for a scope");
                    String::new()
                })
            }
        }
    }

    /// Writes the text exposition into `out`, after clearing it: a buffer
    /// kept between scrapes saves allocating (and faulting in) a large one
    /// each time.
    pub fn render_into(&self, out: &mut String) {
        out.clear();
        let mut bytes = std::mem::take(out).into_bytes();
        // The exporter writes UTF-8 text; `render_to_write` into memory
        // cannot fail.
        let _ = self.prometheus.render_to_write(&mut bytes);
        *out = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        if let Some(store) = &self.store {
            store.render(out);
        }
    }

    /// The protobuf exposition (length-delimited
    /// `io.prometheus.client.MetricFamily` messages), which carries native
    /// histograms when they are on ([`RecorderBuilder::native_histograms`]).
    pub fn render_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        super::protobuf::from_text(&self.prometheus.render(), &mut out);
        if let Some(store) = &self.store {
            store.render_protobuf(&mut out);
        }
        out
    }

    /// Whether the breaker's histograms are also kept as native histograms.
    pub fn native_histograms(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.native())
    }

    /// Drains pending histogram samples and drops expired series. The task
    /// spawned by [`install`](super::install) calls it every
    /// [`UPKEEP_INTERVAL`](super::UPKEEP_INTERVAL); call it yourself
    /// periodically when nothing does and scrapes are rare.
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
        if let Some(store) = &self.store {
            store.upkeep();
        }
    }

    /// The wrapped exporter's handle (the metrics that are not the
    /// breaker's).
    pub fn prometheus(&self) -> &PrometheusHandle {
        &self.prometheus
    }

    /// How many breaker series are held, and how many of them belong to
    /// breakers that are gone and wait for their expiry.
    pub fn breaker_series(&self) -> (usize, usize) {
        self.store.as_ref().map_or((0, 0), |s| s.series())
    }
}

impl BreakerRecorder {
    /// Wraps a Prometheus recorder built elsewhere, with the defaults of
    /// [`RecorderBuilder`] for the breaker's families.
    pub fn wrap(prometheus: PrometheusRecorder) -> Self {
        let config = RecorderBuilder::new()
            .store_config()
            .expect("the defaults are valid");
        BreakerRecorder {
            prometheus,
            store: Arc::new(Store::new(config)),
        }
    }

    /// A handle that renders this recorder.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            prometheus: self.prometheus.handle(),
            store: Some(self.store.clone()),
        }
    }
}

impl Recorder for BreakerRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if is_breaker_family(key.as_str()) {
            self.store.describe(key, Kind::Counter, description);
        } else {
            self.prometheus.describe_counter(key, unit, description);
        }
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if is_breaker_family(key.as_str()) {
            self.store.describe(key, Kind::Gauge, description);
        } else {
            self.prometheus.describe_gauge(key, unit, description);
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if is_breaker_family(key.as_str()) {
            self.store.describe(key, Kind::Histogram, description);
        } else {
            self.prometheus.describe_histogram(key, unit, description);
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if is_breaker_family(key.name()) {
            self.store.counter(key)
        } else {
            self.prometheus.register_counter(key, metadata)
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if is_breaker_family(key.name()) {
            self.store.gauge(key)
        } else {
            self.prometheus.register_gauge(key, metadata)
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if is_breaker_family(key.name()) {
            self.store.histogram(key)
        } else {
            self.prometheus.register_histogram(key, metadata)
        }
    }
}

/// Configures a [`BreakerRecorder`]: the exporter's builder for the other
/// metrics, and the breaker families' buckets, native histograms, expiry
/// and global labels.
///
/// ```
/// use std::time::Duration;
/// use tower_breaker::exporter::RecorderBuilder;
///
/// let (recorder, handle) = RecorderBuilder::new()
///     .series_expiry(Duration::from_secs(120))
///     .native_histograms(true)
///     .global_label("cluster", "eu-1")
///     .build()
///     .unwrap();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("circuit_breaker_requests_total", "service" => "a").increment(1);
/// });
/// assert!(handle.render().contains(r#"{cluster="eu-1",service="a"} 1"#));
/// ```
pub struct RecorderBuilder {
    prometheus: Option<PrometheusBuilder>,
    series_expiry: Duration,
    native: Option<NativeConfig>,
    duration_buckets: Vec<f64>,
    recovery_buckets: Vec<f64>,
    global_labels: Vec<(String, String)>,
    clock: Option<Clock>,
}

impl fmt::Debug for RecorderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecorderBuilder")
            .field("series_expiry", &self.series_expiry)
            .field("native_histograms", &self.native.is_some())
            .field("duration_buckets", &self.duration_buckets)
            .field("recovery_buckets", &self.recovery_buckets)
            .field("global_labels", &self.global_labels)
            .finish_non_exhaustive()
    }
}

impl Default for RecorderBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecorderBuilder {
    /// The defaults: [`prometheus_builder`] for the other metrics,
    /// [`DURATION_BUCKETS`] and [`RECOVERY_BUCKETS`], classic histograms
    /// only, [`DEFAULT_SERIES_EXPIRY`].
    pub fn new() -> Self {
        RecorderBuilder {
            prometheus: None,
            series_expiry: DEFAULT_SERIES_EXPIRY,
            native: None,
            duration_buckets: DURATION_BUCKETS.to_vec(),
            recovery_buckets: RECOVERY_BUCKETS.to_vec(),
            global_labels: Vec::new(),
            clock: None,
        }
    }

    /// The exporter's builder for every metric that is not the breaker's
    /// (default: [`prometheus_builder`]). Its global labels, buckets and
    /// idle timeouts apply to those metrics only: set the breaker's with
    /// this builder's methods.
    pub fn prometheus(mut self, builder: PrometheusBuilder) -> Self {
        self.prometheus = Some(builder);
        self
    }

    /// How long the series of a breaker that is gone stay in the
    /// exposition (default [`DEFAULT_SERIES_EXPIRY`], at most
    /// [`MAX_SERIES_EXPIRY`]). A series goes when no handle to it is held
    /// and no live breaker uses its `service` label (for the dependency
    /// gauge, its `upstream`); it is removed by the first sweep at least
    /// this long after a sweep found it so. Sweeps run at most every quarter
    /// of this (1 s to 60 s), at renders, upkeep and new registrations, so
    /// with regular scrapes a gone breaker's series leave within this plus
    /// two sweep intervals. A live breaker's series never expire.
    pub fn series_expiry(mut self, expiry: Duration) -> Self {
        self.series_expiry = expiry;
        self
    }

    /// Also keeps the request-duration histograms as Prometheus native
    /// histograms (schema 3, at most 160 buckets, as the Go client's
    /// defaults), served to scrapers that ask for the protobuf format
    /// (Prometheus started with `--enable-feature=native-histograms`): each
    /// is one series there, queried as
    /// `histogram_quantile(0.9, sum(rate(circuit_breaker_request_duration_seconds[1m])))`,
    /// and such a Prometheus keeps no `_bucket` series for it. The text
    /// format keeps the classic buckets, and the recovery histogram stays
    /// classic in both.
    pub fn native_histograms(mut self, on: bool) -> Self {
        self.native = on.then(NativeConfig::default);
        self
    }

    /// The classic buckets (upper bounds in seconds, ascending) of
    /// `request_duration_seconds`.
    pub fn duration_buckets(mut self, bounds: &[f64]) -> Self {
        self.duration_buckets = bounds.to_vec();
        self
    }

    /// The classic buckets (upper bounds in seconds, ascending) of
    /// `recovery_duration_seconds`.
    pub fn recovery_buckets(mut self, bounds: &[f64]) -> Self {
        self.recovery_buckets = bounds.to_vec();
        self
    }

    /// A label put on every series, the breaker's and the others'.
    pub fn global_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.global_labels.push((name.into(), value.into()));
        self
    }

    /// Where the expiry reads the time (default: the system clock); a
    /// [`Clock::manual`] makes it testable.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    fn store_config(&self) -> Result<store::Config, ExporterError> {
        if self.series_expiry.is_zero() || self.series_expiry > MAX_SERIES_EXPIRY {
            return Err(ExporterError::setting(
                "series_expiry",
                format!("must be more than 0 and at most {MAX_SERIES_EXPIRY:?}"),
            ));
        }
        let buckets = |field: &'static str, bounds: &[f64]| {
            let ascending = bounds.windows(2).all(|w| w[0] < w[1]);
            if bounds.is_empty() || !ascending || bounds.iter().any(|b| !b.is_finite()) {
                return Err(ExporterError::setting(
                    field,
                    "must be finite upper bounds in strictly ascending order, at least one",
                ));
            }
            Ok(Arc::<[f64]>::from(bounds))
        };
        for (name, _) in &self.global_labels {
            let valid = name
                .chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()));
            if name.is_empty() || !valid || name.starts_with("__") || name == "le" {
                return Err(ExporterError::setting(
                    "global_label",
                    format!("{name:?} is not a label name a series may carry"),
                ));
            }
        }
        Ok(store::Config {
            expiry: self.series_expiry,
            clock: self.clock.clone().unwrap_or_default(),
            native: self.native.clone(),
            duration_buckets: buckets("duration_buckets", &self.duration_buckets)?,
            recovery_buckets: buckets("recovery_buckets", &self.recovery_buckets)?,
            global_labels: self.global_labels.clone(),
        })
    }

    /// Builds the recorder and its handle, without installing it.
    ///
    /// # Errors
    ///
    /// A setting out of range; the message names it.
    pub fn build(self) -> Result<(BreakerRecorder, MetricsHandle), ExporterError> {
        let config = self.store_config()?;
        let mut prometheus = self.prometheus.unwrap_or_else(prometheus_builder);
        for (name, value) in self.global_labels {
            prometheus = prometheus.add_global_label(name, value);
        }
        let recorder = BreakerRecorder {
            prometheus: prometheus.build_recorder(),
            store: Arc::new(Store::new(config)),
        };
        let handle = recorder.handle();
        Ok((recorder, handle))
    }

    /// Builds the recorder and installs it as the global recorder, with an
    /// upkeep task as [`install`](super::install) describes.
    ///
    /// # Errors
    ///
    /// A setting out of range, or a global recorder already installed.
    pub fn install(self) -> Result<MetricsHandle, ExporterError> {
        let (recorder, handle) = self.build()?;
        metrics::set_global_recorder(recorder)
            .map_err(|_| ExporterError::new(ErrorKind::RecorderInstalled))?;
        super::spawn_upkeep(&handle);
        Ok(handle)
    }
}
