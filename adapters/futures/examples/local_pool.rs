//! The same workload on `futures::executor::LocalPool`, under virtual time:
//! run every task until it stalls, then move the `ManualTimer` to its next
//! deadline.
//!
//! ```sh
//! cargo run -p tenlives-futures --example local_pool
//! ```

mod common;

use std::rc::Rc;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use tenlives_futures::ManualTimer;

fn main() {
    let scenario = Rc::new(common::Scenario::new(ManualTimer::new()));
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let s = scenario.clone();
    spawner
        .spawn_local(async move { s.telemetry().await })
        .unwrap();
    let s = scenario.clone();
    spawner
        .spawn_local(async move { s.clients().await })
        .unwrap();
    let mut jumps = 0;
    loop {
        pool.run_until_stalled();
        if scenario.timer.advance_to_next().is_none() {
            break;
        }
        jumps += 1;
    }
    scenario.finish();
    println!("LocalPool: {jumps} jumps of virtual time");
}
