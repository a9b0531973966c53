//! The Rust client's side of the browser benchmark (`npm run bench` in clients/typescript runs
//! it next to the page, against the same room-server):
//!
//! ```text
//! room-bench calls   URL USER N          sequential ListMembers round trips: p50 and p99
//! room-bench flood   URL USER ROOM N K   sends N messages to ROOM, K calls in flight
//! room-bench receive URL USER ROOM N     counts N RoomMessage events: events per second
//! ```
//!
//! Each signs up as USER, joins the room (`bench` for `calls`), prints `ready`, then one line
//! of `key=value` figures.

use std::time::{Duration, Instant};

use room::client::{Auth, ChatClient, ChatEvent, ChatOptions};

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str, Error> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| "usage: room-bench calls|flood|receive URL USER …".into())
    };
    let number = |i: usize| -> Result<usize, Error> { Ok(arg(i)?.parse()?) };
    let (url, user) = (arg(1)?, arg(2)?);
    let options = ChatOptions::new(
        url,
        Auth::SignUp {
            user: user.to_owned(),
            password: format!("{user}-bench"),
        },
    )
    .call_timeout(Duration::from_secs(30))
    .agent("room-bench");
    let (chat, mut events) = ChatClient::connect(options).await?;
    match arg(0)? {
        "calls" => {
            chat.join("bench").await?;
            println!("ready");
            let mut times = Vec::new();
            for _ in 0..number(3)? {
                let start = Instant::now();
                chat.members("bench").await?;
                times.push(start.elapsed());
            }
            times.sort();
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_micros();
            println!(
                "calls n={} p50_us={} p99_us={}",
                times.len(),
                at(0.5),
                at(0.99)
            );
        }
        "flood" => {
            let room = arg(3)?;
            let (count, in_flight) = (number(4)?, number(5)?.max(1));
            chat.join(room).await?;
            println!("ready");
            let start = Instant::now();
            let mut sent = 0;
            let mut running = tokio::task::JoinSet::new();
            while sent < count || !running.is_empty() {
                while sent < count && running.len() < in_flight {
                    let chat = chat.clone();
                    let room = room.to_owned();
                    running.spawn(async move { chat.send(&room, &format!("m{sent}")).await });
                    sent += 1;
                }
                if let Some(done) = running.join_next().await {
                    done??;
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "flood n={count} seconds={seconds:.3} per_second={:.0}",
                count as f64 / seconds
            );
        }
        "receive" => {
            let room = arg(3)?;
            let count = number(4)?;
            chat.join(room).await?;
            println!("ready");
            // Until `count` arrived or nothing came for a second (a server may drop events for
            // a slow consumer); the rate is over what arrived, first to last.
            let mut first = None;
            let mut last = Instant::now();
            let mut received = 0usize;
            while received < count {
                let wait = if first.is_some() {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(60)
                };
                match tokio::time::timeout(wait, events.recv()).await {
                    Ok(Some(ChatEvent::RoomMessage(_))) => {
                        last = Instant::now();
                        first.get_or_insert(last);
                        received += 1;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("the connection ended".into()),
                    Err(_) => break,
                }
            }
            let seconds = first.map_or(0.0, |t| (last - t).as_secs_f64());
            println!(
                "receive n={received} seconds={seconds:.3} per_second={:.0}",
                received.saturating_sub(1) as f64 / seconds.max(1e-9)
            );
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    chat.close().await;
    Ok(())
}
