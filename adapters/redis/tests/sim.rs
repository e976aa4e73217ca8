use std::time::Duration;
use tenlives_redis::sim::{self, Demand, SimConfig};

#[test]
fn explore() {
    for demand in Demand::standard() {
        for l in [5, 10, 25, 50, 100, 250, 500] {
            let c = SimConfig::standard(demand, 1).with_lease(l).unwrap();
            let t = std::time::Instant::now();
            let o = sim::run(&c).unwrap();
            println!("{:10} L={:4} adm={} excess={:.1} slack={:.1} worst1s={} over={:.2}% under={:.2}% calls/1000={:.1} crashed={} per={:?} {:?}",
                demand.name(), o.max_lease, o.admitted, o.excess, c.over_admission_slack(), o.worst_window, o.over_fraction()*100.0, o.under_fraction()*100.0, o.calls_per_1000(), o.crashed_held, o.per_instance, t.elapsed());
        }
    }
    let _ = Duration::ZERO;
}
