//! HTTP on actix-web: `/health` and Prometheus `/metrics`. The REST query API joins it
//! with the query work.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use actix_web::{get, web, HttpResponse, Responder};

use crate::node::Node;
use crate::shard::ShardHandle;

#[get("/health")]
async fn health() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[get("/metrics")]
async fn metrics(node: web::Data<Node>) -> impl Responder {
    let mut body = String::new();
    let per_shard =
        |body: &mut String, name: &str, kind: &str, value: &dyn Fn(&ShardHandle) -> u64| {
            let _ = writeln!(body, "# TYPE {name} {kind}");
            for shard in node.router.shards() {
                let _ = writeln!(body, "{name}{{shard=\"{}\"}} {}", shard.shard, value(shard));
            }
        };
    per_shard(&mut body, "trail_events_total", "counter", &|shard| {
        shard.counters.events_total.load(Ordering::Relaxed)
    });
    per_shard(&mut body, "trail_last_applied_index", "gauge", &|shard| {
        shard.counters.last_applied_index.load(Ordering::Relaxed)
    });
    per_shard(&mut body, "trail_ingest_queue_bytes", "gauge", &|shard| {
        shard.queue.depth_bytes() as u64
    });
    let memory = super::process_memory();
    for (name, value) in [
        ("trail_process_resident_memory_bytes", memory.rss_bytes),
        (
            "trail_process_peak_resident_memory_bytes",
            memory.peak_rss_bytes,
        ),
    ] {
        let _ = writeln!(body, "# TYPE {name} gauge");
        let _ = writeln!(body, "{name} {value}");
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

pub fn configure(config: &mut web::ServiceConfig) {
    config.service(health).service(metrics);
}
