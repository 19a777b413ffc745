//! Reporting: a summary table, CSV and JSON files, and an SVG plot of the RTT distribution over time.

use crate::metrics::Phase;
use crate::sim::Report;
use std::fmt::Write as _;
use std::path::Path;

/// Per-phase rows: every phase metric (the last two, connected_fraction and events, are run-wide).
const ROWS: &[&str] = Phase::METRICS.split_at(Phase::METRICS.len() - 2).0;

fn fmt_v(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// A table: one column per phase plus the total.
pub fn table(r: &Report) -> String {
    let mut cols: Vec<&Phase> = r.phases.iter().collect();
    cols.push(&r.total);
    let mut s = String::new();
    let _ = write!(s, "{:<18}", "metric");
    for p in &cols {
        let _ = write!(s, " {:>14}", format!("{} ({:.0}s)", p.name, (p.end_ns - p.start_ns) as f64 / 1e9));
    }
    s.push('\n');
    for m in ROWS.iter().copied() {
        let _ = write!(s, "{m:<18}");
        for p in &cols {
            let _ = write!(s, " {:>14}", fmt_v(p.metric(m).unwrap_or(0.0)));
        }
        s.push('\n');
    }
    if r.dht_nodes > 0 {
        for m in crate::dht::Metrics::NAMES {
            let _ = write!(s, "{m:<18}");
            for p in &cols {
                let _ = write!(s, " {:>14}", fmt_v(p.metric(m).unwrap_or(0.0)));
            }
            s.push('\n');
        }
        let _ = writeln!(s, "{:<18} {:>14}", "dht_servers", format!("{} of {}", r.dht_servers, r.dht_nodes));
        let _ = writeln!(s, "{:<18} {:>14}", "dht_table_mean", format!("{:.1}", r.dht_table_mean));
        let _ = writeln!(s, "{:<18} {:>14}", "dht_table_rtt_ms", format!("{:.1}", r.dht_table_rtt_ms));
        let _ = writeln!(s, "{:<18} {:>14}", "dht_replaced_nearer", format!("{:.2}", r.dht_replaced_nearer));
        let _ = writeln!(s, "{:<18} {:>14}", "dht_widened", format!("{:.4}", r.dht_widened));
        let _ = writeln!(s, "{:<18} {:>14}", "dht_diversity_rejected", format!("{:.2}", r.dht_diversity_rejected));
    }
    if r.pubsub.nodes > 0 {
        for m in crate::pubsub::Metrics::NAMES {
            let _ = write!(s, "{m:<18}");
            for p in &cols {
                let _ = write!(s, " {:>14}", fmt_v(p.metric(m).unwrap_or(0.0)));
            }
            s.push('\n');
        }
        for m in crate::pubsub::Traffic::NAMES {
            let _ = writeln!(s, "{m:<18} {:>14}", fmt_v(r.pubsub.metric(m).unwrap_or(0.0)));
        }
    }
    let _ = writeln!(s, "{:<18} {:>14}", "connected_fraction", format!("{:.3}", r.connected_fraction));
    let _ = writeln!(s, "{:<18} {:>14}", "events", r.events);
    let _ = writeln!(s, "{:<18} {:>14}", "trace_hash", format!("{:016x}", r.trace_hash));
    s
}

pub fn write_outputs(r: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("phase,metric,value\n");
    let mut cols: Vec<&Phase> = r.phases.iter().collect();
    cols.push(&r.total);
    for p in &cols {
        for m in ROWS.iter().chain(crate::dht::Metrics::NAMES.iter()).chain(crate::pubsub::Metrics::NAMES.iter()).copied() {
            let _ = writeln!(csv, "{},{m},{}", p.name, p.metric(m).unwrap_or(0.0));
        }
    }
    let _ = writeln!(csv, "total,connected_fraction,{}", r.connected_fraction);
    std::fs::write(dir.join("metrics.csv"), csv)?;

    let mut rtt = String::from("bucket_start_s,pings_ok,pings_failed,p50_ms,p90_ms,p99_ms,max_ms\n");
    for (i, h) in r.rtt_over_time.iter().enumerate() {
        let _ = writeln!(
            rtt,
            "{:.3},{},{},{:.3},{:.3},{:.3},{:.3}",
            (i as u64 * r.bucket_ns) as f64 / 1e9,
            h.count,
            r.fails_over_time.get(i).copied().unwrap_or(0),
            h.quantile(0.5) as f64 / 1e6,
            h.quantile(0.9) as f64 / 1e6,
            h.quantile(0.99) as f64 / 1e6,
            h.max_ns as f64 / 1e6
        );
    }
    std::fs::write(dir.join("rtt_over_time.csv"), rtt)?;

    let mut j = String::from("{\n");
    let _ = writeln!(j, "  \"seed\": {},\n  \"nodes\": {},\n  \"virtual_seconds\": {},\n  \"events\": {},\n  \"trace_hash\": \"{:016x}\",\n  \"connected_fraction\": {},", r.seed, r.nodes, r.virtual_time.as_secs_f64(), r.events, r.trace_hash, r.connected_fraction);
    j.push_str("  \"phases\": [\n");
    for (k, p) in cols.iter().enumerate() {
        let _ = write!(j, "    {{\"name\": \"{}\", \"start_s\": {}, \"end_s\": {}", p.name, p.start_ns as f64 / 1e9, p.end_ns as f64 / 1e9);
        for m in ROWS.iter().copied() {
            let _ = write!(j, ", \"{m}\": {}", p.metric(m).unwrap_or(0.0));
        }
        j.push('}');
        j.push_str(if k + 1 < cols.len() { ",\n" } else { "\n" });
    }
    j.push_str("  ]\n}\n");
    std::fs::write(dir.join("metrics.json"), j)?;
    std::fs::write(dir.join("rtt_over_time.svg"), svg(r))?;
    Ok(())
}

/// Ping RTT over virtual time: p50, p90, p99 and max per time bucket.
pub fn svg(r: &Report) -> String {
    let (w, h, ml, mr, mt, mb) = (900.0, 440.0, 70.0, 20.0, 60.0, 50.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let n = r.rtt_over_time.len().max(1);
    let series: [(&str, &str, f64); 4] =
        [("p50", "#1f77b4", 0.5), ("p90", "#2ca02c", 0.9), ("p99", "#ff7f0e", 0.99), ("max", "#d62728", 1.0)];
    let ymax = r.rtt_over_time.iter().map(|h| h.max_ns as f64 / 1e6).fold(0.0, f64::max).max(1e-3) * 1.1;
    let x = |i: usize| ml + pw * (i as f64 + 0.5) / n as f64;
    let y = |v: f64| mt + ph - ph * v / ymax;
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Ping RTT over virtual time — {} nodes, seed {}</text>"#,
        w / 2.0,
        r.nodes,
        r.seed
    );
    let _ = writeln!(
        s,
        r#"<line x1="{ml}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{ml}" y1="{mt}" x2="{ml}" y2="{}" stroke="black"/>"#,
        mt + ph,
        ml + pw,
        mt + ph,
        mt + ph
    );
    for k in 0..=5 {
        let v = ymax * k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{v:.1}</text>"##,
            y(v),
            ml + pw,
            ml - 6.0,
            y(v) + 4.0
        );
    }
    let secs = r.virtual_time.as_secs_f64();
    for k in 0..=6 {
        let t = secs * k as f64 / 6.0;
        let xx = ml + pw * k as f64 / 6.0;
        let _ = writeln!(s, r#"<text x="{xx}" y="{}" text-anchor="middle">{t:.0}s</text>"#, mt + ph + 18.0);
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">virtual time</text>"#, ml + pw / 2.0, h - 8.0);
    let _ = writeln!(s, r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">RTT (ms)</text>"#, mt + ph / 2.0);
    for (li, (name, color, q)) in series.iter().enumerate() {
        let pts: Vec<String> = r
            .rtt_over_time
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count > 0)
            .map(|(i, h)| {
                let v = if *q >= 1.0 { h.max_ns } else { h.quantile(*q) } as f64 / 1e6;
                format!("{:.1},{:.1}", x(i), y(v))
            })
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        }
        let lx = ml + 10.0 + 70.0 * li as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="4" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
            mt - 20.0,
            lx + 16.0,
            mt - 15.0
        );
    }
    let lx = ml + 10.0 + 70.0 * series.len() as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{lx}" y="{}" width="12" height="10" fill="#f4cccc"/><text x="{}" y="{}">time with failed pings (count on top)</text>"##,
        mt - 23.0,
        lx + 16.0,
        mt - 15.0
    );
    // Buckets where pings failed (e.g. during a partition) are shaded, with the number of failures.
    for (i, f) in r.fails_over_time.iter().enumerate() {
        if *f > 0 {
            let x0 = ml + pw * i as f64 / n as f64;
            let _ = writeln!(
                s,
                r##"<rect x="{x0:.1}" y="{mt}" width="{:.1}" height="{ph}" fill="#f4cccc" opacity="0.6"/><text x="{:.1}" y="{}" text-anchor="middle" font-size="9" fill="#a33">{f}</text>"##,
                pw / n as f64,
                x0 + pw / n as f64 / 2.0,
                mt + 10.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
