//! `query`: a tenant's events matching a filter, as a table or JSON lines, one page or
//! (`--all`) every page.

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use trail_client::json::stored_event_to_string;
use trail_client::Client;
use trail_proto::v1::{
    ActorType, CountRequest, QueryFilter, QueryOrder, QueryRequest, QueryResponse, ReadConsistency,
    Result as EventResult, StoredEvent,
};
use trail_proto::Timestamp;

use crate::output::{eprint_above, group_thousands, print_line, progress_bar};
use crate::read::closed_stdout;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActorTypeArg {
    User,
    Service,
    System,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ResultArg {
    Success,
    Failure,
    Denied,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConsistencyArg {
    /// The shard's leader answers after a read-index check: every event acknowledged
    /// before the read is seen.
    Strong,
    /// The replica on the node asked answers, as far as it has applied: may miss the
    /// newest events; spreads reads over the replicas of a cluster.
    Eventual,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OrderArg {
    /// Newest first (descending occurred_at).
    Desc,
    /// Oldest first (ascending occurred_at).
    Asc,
}

/// Which events: a tenant and filters (shared by `query` and `count`; `export` has its
/// own, since its time range without filters bounds ingested_at).
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// The tenant whose events to search.
    #[arg(long)]
    tenant: String,

    /// Events of this actor (exact actor.id).
    #[arg(long, value_name = "ID")]
    actor_id: Option<String>,

    /// Events of this kind of actor.
    #[arg(long, value_enum, ignore_case = true)]
    actor_type: Option<ActorTypeArg>,

    /// An action (`auth.login`) or every action under a prefix (`auth.*` matches
    /// auth.login and auth.mfa.verify, not authz.check).
    #[arg(long)]
    action: Option<String>,

    /// Events on resources of this type.
    #[arg(long, value_name = "TYPE")]
    resource_type: Option<String>,

    /// Events on the resource with this id.
    #[arg(long, value_name = "ID")]
    resource_id: Option<String>,

    /// Events with this result.
    #[arg(long, value_enum, ignore_case = true)]
    result: Option<ResultArg>,

    /// Events of this request.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,

    /// Events that occurred at or after this RFC 3339 time (e.g. 2025-01-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    start_time: Option<Timestamp>,

    /// Events that occurred before this RFC 3339 time (exclusive).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    end_time: Option<Timestamp>,

    /// How fresh the answer must be (in a cluster: who answers).
    #[arg(long, value_enum, ignore_case = true, default_value = "strong")]
    consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    filter: FilterArgs,

    /// Events per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,

    /// Newest first (desc, the default) or oldest first (asc), by occurred_at.
    #[arg(long, value_enum, default_value = "desc")]
    order: OrderArg,

    /// Continue an earlier query from the cursor it printed (same filters and order).
    #[arg(long)]
    cursor: Option<String>,

    /// Follow the cursors to the last page.
    #[arg(long)]
    all: bool,

    /// Print JSON lines (the workload's shape, as `trailctl get`) instead of a table.
    #[arg(long)]
    json: bool,

    /// No progress spinner with --all.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    let time = DateTime::parse_from_rfc3339(text).map_err(|_| {
        format!(
            "{text:?} is not an RFC 3339 time; use e.g. 2025-01-01T00:00:00Z or \
             2025-01-01T09:30:00.5+01:00"
        )
    })?;
    Ok(Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos().min(999_999_999))
            .expect("nanos below 1e9 fit in i32"),
    })
}

#[derive(Debug, Args)]
pub struct CountArgs {
    #[command(flatten)]
    filter: FilterArgs,

    /// Print `{"count": n}` instead of the number.
    #[arg(long)]
    json: bool,
}

impl FilterArgs {
    pub fn filter(&self) -> QueryFilter {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        QueryFilter {
            actor_id: text(&self.actor_id),
            actor_type: match self.actor_type {
                None => ActorType::Unspecified,
                Some(ActorTypeArg::User) => ActorType::User,
                Some(ActorTypeArg::Service) => ActorType::Service,
                Some(ActorTypeArg::System) => ActorType::System,
            } as i32,
            action: text(&self.action),
            resource_type: text(&self.resource_type),
            resource_id: text(&self.resource_id),
            result: match self.result {
                None => EventResult::Unspecified,
                Some(ResultArg::Success) => EventResult::Success,
                Some(ResultArg::Failure) => EventResult::Failure,
                Some(ResultArg::Denied) => EventResult::Denied,
            } as i32,
            request_id: text(&self.request_id),
            start_time: self.start_time,
            end_time: self.end_time,
        }
    }

    fn consistency(&self) -> i32 {
        let consistency = match self.consistency {
            ConsistencyArg::Strong => ReadConsistency::Strong,
            ConsistencyArg::Eventual => ReadConsistency::Eventual,
        };
        consistency as i32
    }
}

impl QueryArgs {
    fn request(&self) -> QueryRequest {
        QueryRequest {
            tenant_id: self.filter.tenant.clone(),
            filter: Some(self.filter.filter()),
            limit: self.limit,
            cursor: self.cursor.clone().unwrap_or_default(),
            order: match self.order {
                OrderArg::Desc => QueryOrder::NewestFirst,
                OrderArg::Asc => QueryOrder::OldestFirst,
            } as i32,
            consistency: self.filter.consistency(),
        }
    }
}

/// `trailctl count`: the number of matching events, answered from the node's indexes.
pub async fn count(client: &Client, args: CountArgs) -> anyhow::Result<ExitCode> {
    let count = client
        .count(CountRequest {
            tenant_id: args.filter.tenant.clone(),
            filter: Some(args.filter.filter()),
            consistency: args.filter.consistency(),
        })
        .await?;
    let line = if args.json {
        serde_json::json!({ "count": count }).to_string()
    } else {
        count.to_string()
    };
    if let Err(error) = print_line(&line) {
        return closed_stdout(error);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(client: &Client, args: QueryArgs) -> anyhow::Result<ExitCode> {
    let mut request = args.request();
    let bar = if args.all {
        progress_bar(None, "{spinner} {elapsed_precise} {msg}", args.quiet)
    } else {
        ProgressBar::hidden()
    };
    let mut table = Table::default();
    let mut events_total: u64 = 0;
    let mut examined_total: u64 = 0;
    loop {
        let page = client.query(request.clone()).await?;
        events_total += page.events.len() as u64;
        examined_total += page.events_examined;
        let printed = if args.json {
            print_json_lines(&page.events)
        } else {
            table.print_page(&page.events, &bar)
        };
        if let Err(error) = printed {
            bar.finish_and_clear();
            return closed_stdout(error);
        }
        bar.set_message(format!(
            "{} events, {} examined",
            group_thousands(events_total),
            group_thousands(examined_total)
        ));
        if page.next_cursor.is_empty() {
            break;
        }
        if !args.all {
            eprint_above(&bar, &more_hint(&page));
            break;
        }
        request.cursor = page.next_cursor;
    }
    bar.finish_and_clear();
    if !args.json && events_total == 0 {
        if let Err(error) = print_line("(no matching events)") {
            return closed_stdout(error);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What to run for the next page, on stderr, so stdout stays the results alone.
fn more_hint(page: &QueryResponse) -> String {
    let scanned = page
        .scanned_to
        .as_ref()
        .map(|position| format!(" (scanned to {} seq {})", position.stream, position.seq))
        .unwrap_or_default();
    if page.partial {
        format!(
            "the node stopped after examining {} events{scanned} before filling the page; \
             to continue, repeat the command with --cursor {}, or use --all",
            group_thousands(page.events_examined),
            page.next_cursor
        )
    } else {
        format!(
            "more events match: for the next page repeat the command with --cursor {}, \
             or use --all",
            page.next_cursor
        )
    }
}

fn print_json_lines(events: &[StoredEvent]) -> std::io::Result<()> {
    for stored in events {
        print_line(&stored_event_to_string(stored, false))?;
    }
    Ok(())
}

const HEADER: [&str; 6] = ["time", "actor", "action", "resource", "result", "seq"];

/// A table printed page by page: the header with the first page, columns as wide as
/// the widest value seen so far.
#[derive(Default)]
struct Table {
    widths: Option<[usize; 6]>,
}

impl Table {
    fn print_page(&mut self, events: &[StoredEvent], bar: &ProgressBar) -> std::io::Result<()> {
        let rows: Vec<[String; 6]> = events.iter().map(row).collect();
        let mut widths = self
            .widths
            .unwrap_or_else(|| HEADER.map(|title| title.len()));
        for row in &rows {
            for (column, cell) in row.iter().enumerate() {
                widths[column] = widths[column].max(cell.chars().count());
            }
        }
        let first_page = self.widths.is_none();
        self.widths = Some(widths);
        let mut lines = Vec::with_capacity(rows.len() + 1);
        if first_page && !rows.is_empty() {
            lines.push(format_row(&HEADER.map(str::to_string), &widths));
        }
        for row in &rows {
            lines.push(format_row(row, &widths));
        }
        if lines.is_empty() {
            return Ok(());
        }
        let text = lines.join("\n");
        if bar.is_hidden() {
            print_line(&text)
        } else {
            let mut printed = Ok(());
            bar.suspend(|| printed = print_line(&text));
            printed
        }
    }
}

fn format_row(cells: &[String; 6], widths: &[usize; 6]) -> String {
    let mut line = String::new();
    for (column, cell) in cells.iter().enumerate() {
        if column > 0 {
            line.push_str("  ");
        }
        // The seq is a number and aligns right; text aligns left.
        if column == 5 {
            line.push_str(&format!("{cell:>width$}", width = widths[column]));
        } else {
            line.push_str(&format!("{cell:<width$}", width = widths[column]));
        }
    }
    line.trim_end().to_string()
}

fn row(stored: &StoredEvent) -> [String; 6] {
    let Some(event) = stored.event.as_ref() else {
        return [
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            stored.seq.to_string(),
        ];
    };
    let time = event
        .occurred_at
        .as_ref()
        .map(table_time)
        .unwrap_or_default();
    let actor = event
        .actor
        .as_ref()
        .map(|actor| actor.id.clone())
        .unwrap_or_default();
    let resource = match event.resource.as_ref() {
        None => "-".to_string(),
        Some(resource) if resource.id.is_empty() => resource.r#type.clone(),
        Some(resource) => format!("{}/{}", resource.r#type, resource.id),
    };
    let result = match EventResult::try_from(event.result) {
        Ok(EventResult::Success) => "SUCCESS",
        Ok(EventResult::Failure) => "FAILURE",
        Ok(EventResult::Denied) => "DENIED",
        Ok(EventResult::Unspecified) | Err(_) => "?",
    };
    [
        time,
        actor,
        event.action.clone(),
        resource,
        result.to_string(),
        stored.seq.to_string(),
    ]
}

/// Microseconds, always six digits, so the column has one width.
fn table_time(time: &Timestamp) -> String {
    let nanos = u32::try_from(time.nanos.clamp(0, 999_999_999)).unwrap_or(0);
    match DateTime::<Utc>::from_timestamp(time.seconds, nanos) {
        Some(utc) => utc.to_rfc3339_opts(SecondsFormat::Micros, true),
        None => format!("{}s", time.seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trail_proto::v1::{Actor, Event, Resource};

    #[test]
    fn rows_show_time_actor_action_resource_result_seq() {
        let stored = StoredEvent {
            event: Some(Event {
                actor: Some(Actor {
                    id: "usr_1".into(),
                    ..Default::default()
                }),
                action: "auth.login".into(),
                resource: Some(Resource {
                    r#type: "session".into(),
                    id: "ses_1".into(),
                }),
                result: EventResult::Failure as i32,
                occurred_at: Some(Timestamp {
                    seconds: 1_735_689_602,
                    nanos: 719_812_000,
                }),
                ..Default::default()
            }),
            seq: 42,
            ..Default::default()
        };
        let cells = row(&stored);
        assert_eq!(
            cells,
            [
                "2025-01-01T00:00:02.719812Z",
                "usr_1",
                "auth.login",
                "session/ses_1",
                "FAILURE",
                "42"
            ]
            .map(str::to_string)
        );
        let widths = [27, 5, 10, 13, 7, 4];
        assert_eq!(
            format_row(&cells, &widths),
            "2025-01-01T00:00:02.719812Z  usr_1  auth.login  session/ses_1  FAILURE    42"
        );
    }

    #[test]
    fn times_parse_with_offsets_and_name_the_format() {
        let time = parse_time("2025-01-01T01:00:00.5+01:00").unwrap();
        assert_eq!(time.seconds, 1_735_689_600);
        assert_eq!(time.nanos, 500_000_000);
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
