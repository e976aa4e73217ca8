//! Criticality under overload (paused clock): through an admission queue
//! with a class per criticality that sheds the lowest first, critical
//! requests keep their success rate while sheddable ones pay; the same load
//! through a FIFO queue spreads the failures evenly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_tokio::criticality::{
    ByCriticality, Criticality, CriticalityThrottleLayer, queue_config,
};
use tenlives_tokio::{AdmissionQueueLayer, ThrottleLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

const ALL: [Criticality; 3] = [
    Criticality::Critical,
    Criticality::Default,
    Criticality::Sheddable,
];

/// 4 calls at a time of 20 ms each (200 a second); a request every 2 ms
/// (500 a second, 2.5 times that), criticality in turn; 2 s of arrivals;
/// at most 100 ms of waiting. Returns the success rate per criticality.
async fn overload(config: QueueConfig, by_class: bool) -> [f64; 3] {
    let queue = AdmissionQueue::new(Bulkhead::new(4).unwrap(), config);
    let layer = AdmissionQueueLayer::new(queue, Duration::from_millis(100));
    let upstream = service_fn(|c: Criticality| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(c)
    });
    let ok: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    for i in 0..1000usize {
        let c = ALL[i % 3];
        let ok = Arc::clone(&ok);
        let fut = if by_class {
            let mut svc = layer
                .clone()
                .class_by(ByCriticality(|c: &Criticality| *c))
                .layer(upstream);
            svc.ready().await.unwrap().call(c)
        } else {
            let mut svc = layer.clone().class_by(|_: &Criticality| 0).layer(upstream);
            svc.ready().await.unwrap().call(c)
        };
        tasks.push(tokio::spawn(async move {
            if fut.await.is_ok() {
                ok[usize::from(c.class())].fetch_add(1, Ordering::Relaxed);
            }
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = [334.0, 333.0, 333.0];
    std::array::from_fn(|i| ok[i].load(Ordering::Relaxed) as f64 / sent[i])
}

#[tokio::test(start_paused = true)]
async fn critical_traffic_keeps_its_success_rate_under_overload() {
    let by_class = overload(queue_config(16, [16, 4, 1]).unwrap(), true).await;
    let fifo = overload(QueueConfig::weighted(16, &[1]).unwrap(), false).await;
    println!("by criticality {by_class:?}, fifo {fifo:?}");
    // Capacity is 40 % of the load: critical (a third of it) fits whole.
    assert!(by_class[0] >= 0.95, "critical {by_class:?}");
    assert!(by_class[2] <= 0.25, "sheddable {by_class:?}");
    assert!(
        by_class[0] > by_class[1] && by_class[1] > by_class[2],
        "{by_class:?}"
    );
    // FIFO: every class about the same, all well below critical's rate.
    for rate in fifo {
        assert!(rate < 0.6, "fifo {fifo:?}");
    }
}

/// A backend that refuses 3 requests in 4 (whatever their criticality),
/// behind a throttle scaled per criticality: sheddable requests are held
/// back locally most, critical ones least, so more of the backend's
/// accepted answers go to critical traffic.
#[tokio::test(start_paused = true)]
async fn the_throttle_holds_back_sheddable_traffic_first() {
    let throttle = Throttle::new(
        ThrottleConfig::builder()
            .minimum_requests(10)
            .seed(3)
            .build()
            .unwrap(),
    );
    let layer = CriticalityThrottleLayer::new(ThrottleLayer::new(throttle), |c: &Criticality| *c);
    let n = Arc::new(AtomicU64::new(0));
    let mut svc = layer.layer(service_fn(move |c: Criticality| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        async move {
            if i.is_multiple_of(4) {
                Ok(c)
            } else {
                Err("overloaded")
            }
        }
    }));
    let mut local = [0u32; 3];
    for i in 0..3000usize {
        let c = ALL[i % 3];
        if let Err(e) = svc.ready().await.unwrap().call(c).await {
            local[usize::from(c.class())] += u32::from(e.is_rejected());
        }
    }
    println!("held back locally: {local:?} of 1000 each");
    assert!(local[0] < local[1] && local[1] < local[2], "{local:?}");
    assert!(local[2] > 2 * local[0], "{local:?}");
}

#[test]
fn parse_and_config() {
    assert_eq!(
        Criticality::parse(b"CRITICAL_PLUS"),
        Some(Criticality::Critical)
    );
    assert_eq!(
        Criticality::parse(b"sheddable"),
        Some(Criticality::Sheddable)
    );
    assert_eq!(Criticality::parse(b"urgent"), None);
    assert!(queue_config(16, [1, 4, 16]).is_err());
    assert_eq!(queue_config(16, [4, 4, 1]).unwrap().classes(), 3);
}
