//! HTTP on actix-web: `/health` and Prometheus `/metrics`. The REST query API joins it
//! with the query work.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use actix_web::{get, web, HttpResponse, Responder};

use crate::node::Node;

#[get("/health")]
async fn health() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[get("/metrics")]
async fn metrics(node: web::Data<Node>) -> impl Responder {
    let mut body = String::new();
    let memory = super::process_memory();
    let _ = writeln!(body, "# TYPE trail_events_total counter");
    for shard in node.router.shards() {
        let events = shard.counters.events_total.load(Ordering::Relaxed);
        let _ = writeln!(
            body,
            "trail_events_total{{shard=\"{}\"}} {events}",
            shard.shard
        );
    }
    let _ = writeln!(body, "# TYPE trail_last_applied_index gauge");
    for shard in node.router.shards() {
        let index = shard.counters.last_applied_index.load(Ordering::Relaxed);
        let _ = writeln!(
            body,
            "trail_last_applied_index{{shard=\"{}\"}} {index}",
            shard.shard
        );
    }
    let _ = writeln!(body, "# TYPE trail_ingest_queue_bytes gauge");
    for shard in node.router.shards() {
        let _ = writeln!(
            body,
            "trail_ingest_queue_bytes{{shard=\"{}\"}} {}",
            shard.shard,
            shard.queue.depth_bytes()
        );
    }
    let _ = writeln!(body, "# TYPE trail_process_resident_memory_bytes gauge");
    let _ = writeln!(
        body,
        "trail_process_resident_memory_bytes {}",
        memory.rss_bytes
    );
    let _ = writeln!(
        body,
        "# TYPE trail_process_peak_resident_memory_bytes gauge"
    );
    let _ = writeln!(
        body,
        "trail_process_peak_resident_memory_bytes {}",
        memory.peak_rss_bytes
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

pub fn configure(config: &mut web::ServiceConfig) {
    config.service(health).service(metrics);
}
