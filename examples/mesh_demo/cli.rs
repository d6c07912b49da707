//! Command-line flags, parsed by hand.

use std::time::Duration;

pub(crate) const USAGE: &str = "\
usage: cargo run --example mesh_demo --all-features -- [flags]

  --duration-secs N   stop after N seconds (default: run until Ctrl-C)
  --port N            metrics endpoint port on 127.0.0.1 (default 9464; 0 = any free port)
  --gateway-port N    gateway and admin port on 127.0.0.1 (default: --port + 1; 0 = any)
  --token T           require `Authorization: Bearer T` (T at least 16 bytes) on /metrics, /dependencies.* and /admin
  --viewer T=SCOPE    (repeatable) a token that sees only SCOPE on /metrics and /dependencies.*,
                      e.g. `--viewer T=services=orders,payments-*;view=aggregate` (view: full,
                      aggregate or redacted); needs --token
  --phase-secs N      length of each fault phase: healthy, failing, recovering (default 20)
  --rate N            load generator requests per second, all targets together (default 200)
  --churn-secs N       a new upstream key (pod-1, pod-2, ...) every N seconds behind a keyed
                      layer of its own, each idle and evicted after the next (default: off)
  --series-expiry-secs N
                      how long the series of an evicted key or a dropped breaker stay in
                      /metrics (default 300)
  --native-histograms also serve the duration histograms as Prometheus native histograms, to
                      scrapers that ask for the protobuf format (Prometheus with
                      --enable-feature=native-histograms); text scrapers keep the classic buckets
  --help              this text";

/// The demo's settings.
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) duration: Option<Duration>,
    pub(crate) port: u16,
    pub(crate) gateway_port: Option<u16>,
    pub(crate) token: Option<String>,
    pub(crate) viewers: Vec<(String, tower_breaker::exporter::Scope)>,
    pub(crate) phase: Duration,
    pub(crate) rate: u32,
    pub(crate) native_histograms: bool,
    pub(crate) churn: Option<Duration>,
    pub(crate) series_expiry: Duration,
    pub(crate) help: bool,
}

impl Args {
    /// Parses `--flag value` and `--flag=value`; the error names the flag.
    pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            duration: None,
            port: 9464,
            gateway_port: None,
            token: None,
            viewers: Vec::new(),
            phase: Duration::from_secs(20),
            rate: 200,
            native_histograms: false,
            churn: None,
            series_expiry: tower_breaker::exporter::DEFAULT_SERIES_EXPIRY,
            help: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            if flag == "--help" || flag == "-h" {
                parsed.help = true;
                continue;
            }
            if flag == "--native-histograms" && inline.is_none() {
                parsed.native_histograms = true;
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--duration-secs" => {
                    let secs: u64 = number(&flag, &value()?)?;
                    if secs == 0 {
                        return Err("--duration-secs must be at least 1".into());
                    }
                    parsed.duration = Some(Duration::from_secs(secs));
                }
                "--port" => parsed.port = number(&flag, &value()?)?,
                "--gateway-port" => parsed.gateway_port = Some(number(&flag, &value()?)?),
                "--token" => {
                    let token = value()?;
                    if token.len() < tower_breaker::exporter::MIN_TOKEN_LEN
                        || !token.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(format!(
                            "--token must be at least {} bytes of printable ASCII",
                            tower_breaker::exporter::MIN_TOKEN_LEN
                        ));
                    }
                    parsed.token = Some(token);
                }
                "--viewer" => {
                    let value = value()?;
                    // The scope starts at `services=` (a token may hold '=').
                    let at = value
                        .find("=services=")
                        .ok_or_else(|| "--viewer wants TOKEN=services=...".to_owned())?;
                    let (token, scope) = (&value[..at], &value[at + 1..]);
                    let scope = scope.parse().map_err(|e| format!("--viewer: {e}"))?;
                    parsed.viewers.push((token.to_owned(), scope));
                }
                "--churn-secs" => {
                    let secs: u64 = number(&flag, &value()?)?;
                    if !(1..=3600).contains(&secs) {
                        return Err("--churn-secs must be between 1 and 3600".into());
                    }
                    parsed.churn = Some(Duration::from_secs(secs));
                }
                "--series-expiry-secs" => {
                    let secs: u64 = number(&flag, &value()?)?;
                    if !(1..=86_400).contains(&secs) {
                        return Err("--series-expiry-secs must be between 1 and 86400".into());
                    }
                    parsed.series_expiry = Duration::from_secs(secs);
                }
                "--phase-secs" => {
                    let secs: u64 = number(&flag, &value()?)?;
                    if !(2..=3600).contains(&secs) {
                        return Err("--phase-secs must be between 2 and 3600".into());
                    }
                    parsed.phase = Duration::from_secs(secs);
                }
                "--rate" => {
                    let rate: u32 = number(&flag, &value()?)?;
                    if !(3..=2000).contains(&rate) {
                        return Err("--rate must be between 3 and 2000".into());
                    }
                    parsed.rate = rate;
                }
                _ => return Err(format!("unknown flag {flag:?}")),
            }
        }
        if !parsed.viewers.is_empty() && parsed.token.is_none() {
            return Err("--viewer needs --token: without a token everyone sees everything".into());
        }
        Ok(parsed)
    }

    /// The gateway's port: `--gateway-port`, else the metrics port + 1
    /// (any free port when the metrics port is 0).
    pub(crate) fn gateway_port(&self) -> u16 {
        match (self.gateway_port, self.port) {
            (Some(port), _) => port,
            (None, 0) => 0,
            (None, port) => port.saturating_add(1),
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: not a valid number: {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.duration, None);
        assert_eq!((args.port, args.gateway_port()), (9464, 9465));
        assert_eq!(args.phase, Duration::from_secs(20));
        assert_eq!((args.rate, args.token, args.help), (200, None, false));
    }

    #[test]
    fn flags_with_space_or_equals() {
        let args = parse(&[
            "--duration-secs",
            "30",
            "--port=0",
            "--token",
            "s3cret-s3cret-s3cret",
            "--phase-secs=5",
            "--rate",
            "90",
        ])
        .unwrap();
        assert_eq!(args.duration, Some(Duration::from_secs(30)));
        assert_eq!((args.port, args.gateway_port()), (0, 0));
        assert_eq!(args.token.as_deref(), Some("s3cret-s3cret-s3cret"));
        assert_eq!((args.phase, args.rate), (Duration::from_secs(5), 90));
        assert_eq!(
            parse(&["--gateway-port", "8080"]).unwrap().gateway_port(),
            8080
        );
        assert!(parse(&["--help"]).unwrap().help);
        assert!(parse(&["--native-histograms"]).unwrap().native_histograms);
        assert!(!parse(&[]).unwrap().native_histograms);
        let args = parse(&[
            "--token",
            "s3cret-s3cret-s3cret",
            "--viewer",
            "team-token-0123456789=services=orders,payments-*;view=aggregate",
            "--viewer=other-token-0123456789=services=catalog",
        ])
        .unwrap();
        assert_eq!(args.viewers.len(), 2);
        assert_eq!(args.viewers[0].0, "team-token-0123456789");
        assert_eq!(
            args.viewers[0].1.view(),
            tower_breaker::exporter::View::Aggregate
        );
        assert!(args.viewers[1].1.allows("catalog"));
        let err = parse(&["--viewer", "t=services=a"]).unwrap_err();
        assert!(err.contains("--token"), "{err}");
    }

    #[test]
    fn errors_name_the_flag() {
        for (args, flag) in [
            (&["--port"][..], "--port"),
            (&["--port", "99999"], "--port"),
            (&["--duration-secs", "0"], "--duration-secs"),
            (&["--phase-secs", "1"], "--phase-secs"),
            (&["--rate", "x"], "--rate"),
            (&["--churn-secs", "0"], "--churn-secs"),
            (&["--series-expiry-secs", "0"], "--series-expiry-secs"),
            (&["--token", ""], "--token"),
            (&["--token", "a b"], "--token"),
            (&["--token", "too-short"], "--token"),
            (&["--viewer", "no-scope-here"], "--viewer"),
            (&["--viewer", "tok=view=full"], "--viewer"),
            (&["--bogus"], "--bogus"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
