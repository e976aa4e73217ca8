//! Rendering a `prometheus-client` registry for a scrape.
//!
//! `prometheus-client` writes the OpenMetrics text format, which Prometheus
//! scrapes natively. Some tools read only the classic Prometheus text format
//! (0.0.4) — `promtool check metrics` among them — so [`render_text`]
//! rewrites the OpenMetrics output into it: a counter's `# HELP` and
//! `# TYPE` lines name the `_total` series, `info` metrics become gauges
//! named `_info`, `# UNIT` and `# EOF` lines and exemplars are left out,
//! and types the classic format lacks (`stateset`, `gaugehistogram`,
//! `unknown`) become `untyped`.

use std::fmt::{self, Write as _};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of [`render_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `registry` in the OpenMetrics text format, ending with `# EOF`.
///
/// # Errors
///
/// Only if a metric's encoder fails; writing to a `String` cannot.
pub fn render_openmetrics(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    encode(&mut out, registry)?;
    Ok(out)
}

/// `registry` in the classic Prometheus text format (0.0.4).
///
/// ```
/// use prometheus_client::metrics::counter::Counter;
/// use prometheus_client::registry::Registry;
/// use tenlives_tokio::telemetry::exposition::render_text;
///
/// let mut registry = Registry::default();
/// let requests: Counter = Counter::default();
/// registry.register("requests", "Requests served", requests.clone());
/// requests.inc_by(3);
/// assert_eq!(
///     render_text(&registry)?,
///     "# HELP requests_total Requests served.\n# TYPE requests_total counter\nrequests_total 3\n"
/// );
/// # Ok::<(), std::fmt::Error>(())
/// ```
///
/// # Errors
///
/// As for [`render_openmetrics`].
pub fn render_text(registry: &Registry) -> Result<String, fmt::Error> {
    openmetrics_to_text(&render_openmetrics(registry)?)
}

/// The classic-format name suffix and type for an OpenMetrics family type.
fn classic_type(openmetrics_type: &str) -> (&'static str, &'static str) {
    match openmetrics_type {
        "counter" => ("_total", "counter"),
        "gauge" => ("", "gauge"),
        "histogram" => ("", "histogram"),
        "summary" => ("", "summary"),
        "info" => ("_info", "gauge"),
        _ => ("", "untyped"),
    }
}

/// Rewrites OpenMetrics text (as `prometheus-client` writes it: `# HELP`,
/// `# TYPE`, optional `# UNIT`, then the samples, per family) into the
/// classic text format.
fn openmetrics_to_text(openmetrics: &str) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(openmetrics.len());
    // The HELP line seen before its family's TYPE line: (name, text).
    let mut help: Option<(&str, &str)> = None;
    // The current family's name and OpenMetrics type.
    let mut family: (&str, &str) = ("", "");
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.rsplit_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, classic) = classic_type(ty);
            match help.take() {
                Some((help_name, text)) if help_name == name => {
                    writeln!(out, "# HELP {name}{suffix} {text}")?;
                }
                Some((help_name, text)) => writeln!(out, "# HELP {help_name} {text}")?,
                None => {}
            }
            writeln!(out, "# TYPE {name}{suffix} {classic}")?;
            family = (name, ty);
        } else if line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
            continue;
        } else if line.starts_with('#') {
            writeln!(out, "{line}")?;
        } else {
            let sample = without_exemplar(line);
            // Classic counters have no creation-time series.
            let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
            let is_created = family.1 == "counter"
                && sample[..name_end]
                    .strip_prefix(family.0)
                    .is_some_and(|s| s == "_created");
            if !is_created {
                writeln!(out, "{sample}")?;
            }
        }
    }
    Ok(out)
}

/// A sample line without its exemplar (` # {labels} value [timestamp]`
/// after the value), respecting quoted label values.
fn without_exemplar(line: &str) -> &str {
    let after_labels = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let mut quoted = false;
            let mut escaped = false;
            let mut end = line.len();
            for (j, c) in line[i..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        end = i + j + 1;
                        break;
                    }
                    _ => {}
                }
            }
            end
        }
        Some(i) => i,
        None => line.len(),
    };
    match line[after_labels..].find(" # ") {
        Some(j) => &line[..after_labels + j],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_lose_eof_units_and_exemplars() {
        let om = "# HELP a_seconds Time.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\n\
                  a_seconds_total{x=\"} # {\"} 2.5 # {trace=\"1\"} 0.5\n\
                  a_seconds_created 17.0\n\
                  # HELP g A gauge.\n# TYPE g gauge\ng 1\n\
                  # HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n\
                  # HELP s States.\n# TYPE s stateset\ns{s=\"a\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om).unwrap(),
            "# HELP a_seconds_total Time.\n# TYPE a_seconds_total counter\n\
             a_seconds_total{x=\"} # {\"} 2.5\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n\
             # HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n\
             # HELP s States.\n# TYPE s untyped\ns{s=\"a\"} 1\n"
        );
    }

    #[test]
    fn escaped_quotes_inside_labels_do_not_end_them() {
        assert_eq!(
            without_exemplar(r#"m{a="x\"} # y"} 1 # {t="2"} 3"#),
            r#"m{a="x\"} # y"} 1"#
        );
        assert_eq!(without_exemplar("m 1 # {t=\"2\"} 3"), "m 1");
        assert_eq!(without_exemplar("m 1"), "m 1");
    }
}
