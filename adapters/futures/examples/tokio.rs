//! The same workload on tokio's current-thread runtime, with `TokioTimer`
//! on tokio's paused clock: when every task sleeps, tokio jumps to the next
//! timer, so this virtual time matches the other examples' to the
//! millisecond.
//!
//! ```sh
//! cargo run -p tenlives-futures --features tokio --example tokio
//! ```

mod common;

use tenlives_futures::TokioTimer;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let scenario = common::Scenario::new(TokioTimer::new());
        tokio::join!(scenario.telemetry(), scenario.clients());
        scenario.finish();
    });
    println!("tokio current-thread runtime, paused clock");
}
