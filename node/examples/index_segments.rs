//! Lists the segments of a node's tantivy index with their document counts and
//! `occurred_at` ranges: `cargo run --release -p trail-node --example index_segments --
//! <data dir>/index`. Read-only; safe beside a running node.

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: index_segments <data dir>/index"))?;
    let index = tantivy::Index::open_in_dir(&dir)?;
    let reader = index.reader()?;
    let searcher = reader.searcher();
    let day = 86_400e9;
    let mut rows = Vec::new();
    for segment in searcher.segment_readers() {
        let occ = segment.fast_fields().i64("occ")?;
        rows.push((occ.min_value(), occ.max_value(), segment.num_docs()));
    }
    rows.sort();
    let first = rows.first().map_or(0, |row| row.0);
    for (min, max, docs) in &rows {
        println!(
            "{docs:>10} docs  occ {:>7.2} .. {:>7.2} days ({:.2} days wide)",
            (*min - first) as f64 / day,
            (*max - first) as f64 / day,
            (*max - *min) as f64 / day
        );
    }
    println!("{} segments", rows.len());
    Ok(())
}
