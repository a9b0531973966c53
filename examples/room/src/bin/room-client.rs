//! The terminal chat client: commands on stdin, messages and events on stdout.
//!
//! ```text
//! cargo run -p room --bin room-client -- --url tcp://127.0.0.1:7001 --user alice \
//!     --password secret --signup
//! ```

use std::path::PathBuf;

use clap::Parser;
use room::client::{Auth, ChatClient, ChatEvent, ChatOptions};
use room::terminal::{self, Clock, Command};
use stmp::Status;
use tokio::io::AsyncBufReadExt;

/// The stmp chat-room client.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server: tcp://HOST:PORT, ws://HOST:PORT/room (binary packets),
    /// ws://HOST:PORT/room?format=text (text packets) or quic://HOST:PORT (with --ca).
    #[arg(long, default_value = "tcp://127.0.0.1:7001")]
    url: String,
    /// Your name.
    #[arg(long, required_unless_present = "token")]
    user: Option<String>,
    /// Your password.
    #[arg(long, required_unless_present = "token")]
    password: Option<String>,
    /// Create the account first.
    #[arg(long)]
    signup: bool,
    /// Sign in with the token of an earlier session instead of a password (another device).
    #[arg(long, conflicts_with_all = ["user", "password", "signup"])]
    token: Option<String>,
    /// The certificate to trust for QUIC (the server's self-signed one is room-cert.pem).
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// The name the server's certificate has, when it is not the URL's host.
    #[arg(long)]
    server_name: Option<String>,
}

fn main() -> std::process::ExitCode {
    // The time zone is read before any thread starts (it cannot be, safely, after).
    let clock = Clock::local();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let ran = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.into())
        .and_then(|runtime| runtime.block_on(run(args, clock)));
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("room-client: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, clock: Clock) -> Result<(), Box<dyn std::error::Error>> {
    let auth = match (args.token, args.user, args.password) {
        (Some(token), _, _) => Auth::Token(token),
        (None, Some(user), Some(password)) if args.signup => Auth::SignUp { user, password },
        (None, Some(user), Some(password)) => Auth::SignIn { user, password },
        _ => return Err("give --user and --password, or --token".into()),
    };
    let mut options =
        ChatOptions::new(&args.url, auth).agent(concat!("room-client/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &args.ca {
        options = options.ca_pem(
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
    }
    options.server_name = args.server_name;
    let (chat, mut events) = match ChatClient::connect(options).await {
        Ok(connected) => connected,
        Err(status) => return Err(format!("cannot connect to {}: {status}", args.url).into()),
    };
    println!(
        "connected to {} over {} as {}; /help lists the commands",
        args.url,
        chat.transport(),
        chat.user()
    );
    if args.signup {
        println!("account {} created", chat.user());
    }

    let mut session = Session {
        chat: chat.clone(),
        clock,
        current: None,
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                match Command::parse(&line) {
                    Ok(Command::Quit) => break,
                    Ok(command) => session.run(command).await,
                    Err(usage) => println!("{usage}"),
                }
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                session.event(&event);
            }
        }
    }
    chat.close().await;
    println!("bye");
    Ok(())
}

/// The terminal's state: the room plain text goes to.
struct Session {
    chat: ChatClient,
    clock: Clock,
    current: Option<String>,
}

impl Session {
    fn now(&self) -> String {
        self.clock.time(room::now_ms())
    }

    fn error(&self, status: &Status) {
        println!("[{}] error: {status}", self.now());
    }

    fn event(&mut self, event: &ChatEvent) {
        println!(
            "{}",
            terminal::event_line(event, &self.clock, &self.chat.user())
        );
        if let ChatEvent::Resumed { .. } = event {
            let rooms = self.chat.rooms();
            if self.current.as_ref().is_some_and(|c| !rooms.contains(c)) {
                self.current = rooms.last().cloned();
                self.tell_current();
            }
        }
    }

    fn tell_current(&self) {
        match &self.current {
            Some(room) => println!("now talking in #{room}"),
            None => println!("in no room now: /join one"),
        }
    }

    async fn run(&mut self, command: Command) {
        match command {
            Command::Join(room) => match self.chat.join(&room).await {
                Ok(info) => {
                    println!(
                        "[{}] you joined #{}; members: {}",
                        self.now(),
                        info.room,
                        info.members.join(", ")
                    );
                    self.current = Some(info.room);
                }
                Err(status) => self.error(&status),
            },
            Command::Leave(room) => {
                let Some(room) = room.or_else(|| self.current.clone()) else {
                    return println!("you are in no room");
                };
                match self.chat.leave(&room).await {
                    Ok(()) => {
                        println!("[{}] you left #{room}", self.now());
                        if self.current.as_deref() == Some(&room) {
                            self.current = self.chat.rooms().last().cloned();
                            self.tell_current();
                        }
                    }
                    Err(status) => self.error(&status),
                }
            }
            Command::Rooms => match self.chat.list_rooms().await {
                Ok(list) => println!("{}", terminal::rooms_lines(&list, &self.chat.rooms())),
                Err(status) => self.error(&status),
            },
            Command::Members(room) => {
                let Some(room) = room.or_else(|| self.current.clone()) else {
                    return println!("usage: /members ROOM (you are in no room)");
                };
                match self.chat.members(&room).await {
                    Ok(info) => println!("{}", terminal::members_line(&info)),
                    Err(status) => self.error(&status),
                }
            }
            Command::Who(room) => match self.chat.who(room.as_deref()).await {
                Ok(list) => println!("{}", terminal::who_lines(&list)),
                Err(status) => self.error(&status),
            },
            Command::Msg { user, text } => match self.chat.direct(&user, &text).await {
                Ok(sent) => println!(
                    "[{}] (you → {user}) {text}",
                    self.clock.time(sent.timestamp)
                ),
                Err(status) => self.error(&status),
            },
            Command::Say(text) => {
                let Some(room) = self.current.clone() else {
                    return println!("you are in no room: /join one first (or /msg someone)");
                };
                match self.chat.send(&room, &text).await {
                    Ok(sent) => println!(
                        "[{}] #{room} <{}> {text}",
                        self.clock.time(sent.timestamp),
                        self.chat.user()
                    ),
                    Err(status) => self.error(&status),
                }
            }
            Command::Token => println!(
                "your session token: {}\nanother device signs in with: room-client --url URL --token THAT-TOKEN",
                self.chat.token()
            ),
            Command::Help => println!("{}", terminal::HELP),
            Command::Nothing | Command::Quit => {}
        }
    }
}
