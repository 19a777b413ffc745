//! hyphae-sim: a deterministic discrete-event network simulator that runs hyphae's own sans-IO protocol
//! machines (the same `node::Node`, `conn::Connection` and `quic::Endpoint` code the tokio driver runs,
//! with real cryptography) at thousands of nodes, on virtual time, from one seed, on as many threads as
//! there are cores without changing a result.

pub mod dht;
pub mod histogram;
pub mod metrics;
pub mod pubsub;
pub mod report;
pub mod scenario;
pub mod sim;

pub use scenario::{parse, Scenario};
pub use sim::{Report, Sim};

/// Checks the scenario's assertions against a report; returns the failures.
pub fn check_asserts(sc: &Scenario, r: &Report) -> Vec<String> {
    let mut fails = Vec::new();
    for a in &sc.asserts {
        match r.metric(&a.phase, &a.metric) {
            None => fails.push(format!("line {}: no phase {:?}", a.line, a.phase)),
            Some(v) => {
                let ok = match a.op.as_str() {
                    "<" => v < a.value,
                    "<=" => v <= a.value,
                    ">" => v > a.value,
                    ">=" => v >= a.value,
                    _ => (v - a.value).abs() < 1e-9,
                };
                if !ok {
                    fails.push(format!("line {}: {}.{} = {v} is not {} {}", a.line, a.phase, a.metric, a.op, a.value));
                }
            }
        }
    }
    fails
}

/// Runs a scenario twice with the same seed and compares the per-event trace hashes: `Ok(final hash)`,
/// or `Err((index of the first diverging event, hash of run 1, hash of run 2))`.
pub fn check_determinism(sc: &Scenario, seed: u64) -> Result<u64, (usize, u64, u64)> {
    let (r1, t1) = Sim::new(sc.clone(), seed).run_traced();
    let (_, t2) = Sim::new(sc.clone(), seed).run_traced();
    for (i, (a, b)) in t1.iter().zip(t2.iter()).enumerate() {
        if a != b {
            return Err((i, *a, *b));
        }
    }
    if t1.len() != t2.len() {
        let i = t1.len().min(t2.len());
        return Err((i, t1.get(i).copied().unwrap_or(0), t2.get(i).copied().unwrap_or(0)));
    }
    Ok(r1.trace_hash)
}
