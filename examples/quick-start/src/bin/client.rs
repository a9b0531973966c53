//! The quick-start client: joins a room, prints its users and every join and exit, and leaves
//! the room on Ctrl-C.
//!
//! ```sh
//! cargo run -p quick-start --bin client -- --url tcp://127.0.0.1:5001 lobby
//! cargo run -p quick-start --bin client -- --url ws://127.0.0.1:5002/quick_start lobby
//! cargo run -p quick-start --bin client -- --url quic://localhost:5003 --ca quick-start.pem lobby
//! ```

use clap::Parser;
use quick_start::{
    ExitRoomInput, JoinRoomInput, RoomEventsListener, RoomServiceClient, UserExitEvent,
    UserJoinEvent, attach_room_events,
};
use stmp::{Client, Context};

/// Joins a room of the quick-start server and prints what happens in it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server: tcp://host:port, ws://host:port/quick_start or quic://localhost:port.
    #[arg(long, default_value = "tcp://127.0.0.1:5001")]
    url: String,
    /// A PEM certificate to trust (the server's `--cert-out`), for quic://, tls:// and wss://.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// The room to join; asked for when missing.
    room: Option<String>,
}

/// Prints the events of the room.
struct Printer;

impl RoomEventsListener for Printer {
    async fn user_join(&self, _ctx: Context, event: UserJoinEvent) {
        println!("+ {} joined", event.user);
    }

    async fn user_exit(&self, _ctx: Context, event: UserExitEvent) {
        println!("- {} left", event.user);
    }
}

fn ask_room() -> std::io::Result<String> {
    use std::io::Write;
    loop {
        print!("room name: ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "no room name given",
            ));
        }
        let name = line.trim();
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let name = match args.room {
        Some(name) => name,
        None => tokio::task::spawn_blocking(ask_room).await??,
    };
    let mut builder = Client::builder();
    if let Some(ca) = &args.ca {
        builder = builder.tls(stmp::tls::client_config(&std::fs::read(ca)?)?);
    }
    let client = builder.connect(&args.url).await?;
    // Listen before joining, so no event of the room is missed.
    let events = attach_room_events(client.router(), Printer);
    let rooms = RoomServiceClient::new(client.clone());
    let room = rooms
        .join_room(JoinRoomInput { name: name.clone() })
        .await?;
    println!("joined {:?}; users: {}", room.name, room.users.join(", "));
    println!("press Ctrl-C to leave");
    tokio::signal::ctrl_c().await?;
    rooms
        .exit_room(ExitRoomInput { name: name.clone() })
        .await?;
    println!("left {name:?}");
    events.detach();
    client.close().await;
    Ok(())
}
