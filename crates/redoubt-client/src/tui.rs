//! `redoubt chat`: a terminal screen with the chat list, the selected chat's
//! messages (updated live: the relay's WebSocket push triggers a sync) and an
//! input line.
//!
//! The screen holds the profile lock only while it syncs or sends, so other
//! `redoubt` commands on the same profile run between its operations. Text
//! from others keeps its line breaks but nothing else that could act on the
//! terminal (`redoubt_client::text`); continuation lines are indented so
//! they cannot pass for new entries.

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures::StreamExt;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::{DefaultTerminal, Frame};
use redoubt_client::model::{Author, ChatRecord, ChatState, Delivery, MessageRecord};
use redoubt_client::text::{lines, one_line};
use redoubt_client::Client;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct App {
    chats: Vec<ChatRecord>,
    selected: usize,
    messages: Vec<MessageRecord>,
    input: String,
    status: String,
    /// A market-exit notice, shown above everything while it stands.
    banner: Option<String>,
    /// Numbers whose new identity held the last message back, until the
    /// user accepts them (Ctrl-A) or types on.
    held: Vec<String>,
}

/// Runs the screen until Esc or Ctrl-C. The terminal is restored on every
/// exit path, errors included.
pub async fn run(mut client: Client) -> anyhow::Result<()> {
    let initial = client.sync().await;
    let mut terminal = ratatui::init();
    let result = event_loop(
        &mut terminal,
        &mut client,
        initial.err().map(|e| e.to_string()),
    )
    .await;
    ratatui::restore();
    result
}

async fn connect(client: &Client) -> Option<Socket> {
    let (url, token) = client.ws_endpoint();
    let mut request = url.into_client_request().ok()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token.expose()).parse().ok()?,
    );
    tokio_tungstenite::connect_async(request)
        .await
        .ok()
        .map(|(s, _)| s)
}

async fn refresh(app: &mut App, client: &mut Client) -> anyhow::Result<()> {
    // What an operation met that the user must see (an identity change, a
    // contact's new device) takes the status line.
    if let Some(last) = client.take_announcements().pop() {
        app.status = one_line(&last).into_owned();
    }
    let current = app.chats.get(app.selected).map(|c| c.group_id.clone());
    app.chats = client.chats().await?;
    if let Some(id) = current {
        if let Some(i) = app.chats.iter().position(|c| c.group_id == id) {
            app.selected = i;
        }
    }
    app.selected = app.selected.min(app.chats.len().saturating_sub(1));
    // A warning about this account itself (a key it did not make in the
    // key directory, a reset it did not do) stands above everything, ahead
    // of a market notice, for as long as it is among the recent notices.
    let alert = security_alert(&client.notices(20).await?);
    app.banner = client.market_notice().await?.map(|m| {
        one_line(&format!(
            "Redoubt is leaving {}: service ends {}, data deleted {}. {}",
            m.jurisdiction, m.effective_at, m.purge_at, m.notice
        ))
        .into_owned()
    });
    if alert.is_some() {
        app.banner = alert;
    }
    app.messages = match app.chats.get(app.selected) {
        Some(chat) => client.messages(chat, 200).await?,
        None => Vec::new(),
    };
    Ok(())
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    client: &mut Client,
    error: Option<String>,
) -> anyhow::Result<()> {
    let mut app = App {
        chats: Vec::new(),
        selected: 0,
        messages: Vec::new(),
        input: String::new(),
        status: error.unwrap_or_else(|| format!("{} — connecting…", client.phone())),
        banner: None,
        held: Vec::new(),
    };
    let mut events = EventStream::new();
    let mut socket = connect(client).await;
    if socket.is_some() {
        app.status = format!("{} — live", client.phone());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        refresh(&mut app, client).await?;
        terminal.draw(|f| draw(f, &app))?;
        tokio::select! {
            event = events.next() => {
                let Some(Ok(Event::Key(key))) = event else { continue };
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                match key.code {
                    KeyCode::Esc => break,
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => break,
                    KeyCode::Tab | KeyCode::Down if !app.chats.is_empty() => {
                        app.selected = (app.selected + 1) % app.chats.len();
                    }
                    KeyCode::BackTab | KeyCode::Up if !app.chats.is_empty() => {
                        app.selected = (app.selected + app.chats.len() - 1) % app.chats.len();
                    }
                    // Alt+Enter starts a new line in the message.
                    KeyCode::Enter if key.modifiers.contains(KeyModifiers::ALT) => {
                        app.input.push('\n');
                    }
                    // Accept the identity changes that held the message back
                    // (after comparing safety numbers), and send it.
                    KeyCode::Char('a')
                        if key.modifiers.contains(KeyModifiers::CONTROL) && !app.held.is_empty() =>
                    {
                        let held = std::mem::take(&mut app.held);
                        match client.accept_changes(&held).await {
                            Ok(()) => {
                                app.status = format!("accepted the new identity of {}; Enter sends", held.join(", "));
                            }
                            Err(e) => app.status = format!("not accepted: {}", one_line(&e.to_string())),
                        }
                    }
                    KeyCode::Enter => {
                        let text = std::mem::take(&mut app.input);
                        if let Some(chat) = app.chats.get(app.selected).cloned() {
                            if !text.trim().is_empty() {
                                match client.send_text(&chat, &text).await {
                                    Ok(m) if m.delivery == Delivery::Queued => {
                                        app.status = "queued: the relay cannot take it now; it is sent when the relay is back".into();
                                    }
                                    Ok(_) => {}
                                    Err(redoubt_client::ClientError::IdentityChanged(phones)) => {
                                        app.status = format!(
                                            "NOT SENT: {} has a new identity key. Compare safety numbers \
                                             (`redoubt verify`), then Ctrl-A accepts it",
                                            phones.join(", ")
                                        );
                                        app.held = phones;
                                        app.input = text;
                                    }
                                    Err(e) => {
                                        app.status = format!("not sent: {}", one_line(&e.to_string()));
                                        app.input = text;
                                    }
                                }
                            }
                        }
                    }
                    KeyCode::Backspace => {
                        app.input.pop();
                    }
                    KeyCode::Char(c) => app.input.push(c),
                    _ => {}
                }
            }
            frame = async { match socket.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                match frame {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => {
                        // A push means the mailbox has something: fetch,
                        // process and acknowledge it through the sync path.
                        if let Err(e) = client.sync().await {
                            app.status = format!("sync failed: {}", one_line(&e.to_string()));
                        }
                    }
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(reason))) => {
                        socket = None;
                        app.status = match reason {
                            Some(r) => format!("disconnected: {}", one_line(&r.reason)),
                            None => "disconnected; retrying".into(),
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        socket = None;
                        app.status = "disconnected; retrying".into();
                    }
                }
            }
            _ = tick.tick() => {
                if socket.is_none() {
                    socket = connect(client).await;
                    if socket.is_some() {
                        app.status = format!("{} — live", client.phone());
                        let _ = client.sync().await;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The screen lines of one message: the first carries who wrote it, the
/// rest (a message written over several lines) are indented under it.
fn message_lines(m: &MessageRecord) -> Vec<Line<'static>> {
    let (head, style) = match &m.author {
        Author::System => {
            let style = if m.text.contains("SAFETY NUMBER CHANGED") || m.text.starts_with('⚠') {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::default().fg(Color::Yellow)
            };
            (Span::styled("* ", style), style)
        }
        Author::Member { me, phone, .. } => {
            let who = if *me {
                "you".to_owned()
            } else {
                one_line(phone).into_owned()
            };
            let colour = if *me { Color::Cyan } else { Color::Green };
            (
                Span::styled(
                    format!("{who}: "),
                    Style::default().fg(colour).add_modifier(Modifier::BOLD),
                ),
                Style::default(),
            )
        }
    };
    let mut out = Vec::new();
    for (i, line) in lines(&m.text).into_iter().enumerate() {
        let first = if i == 0 {
            head.clone()
        } else {
            Span::raw("    ")
        };
        out.push(Line::from(vec![
            first,
            Span::styled(line.into_owned(), style),
        ]));
    }
    match m.delivery {
        Delivery::Sent => {}
        Delivery::Queued => out.push(Line::from(Span::styled(
            "    (queued: not sent yet)",
            Style::default().fg(Color::DarkGray),
        ))),
        Delivery::Failed => out.push(Line::from(Span::styled(
            "    (not delivered)",
            Style::default().fg(Color::Red),
        ))),
    }
    out
}

/// The newest warning about the account itself among `notices` (oldest
/// first), as one line.
fn security_alert(notices: &[MessageRecord]) -> Option<String> {
    notices
        .iter()
        .rev()
        .find(|m| {
            m.author == Author::System
                && (m.text.starts_with("⚠ KEY DIRECTORY")
                    || m.text.starts_with("⚠ YOUR ACCOUNT WAS RESET"))
        })
        .map(|m| one_line(&m.text).into_owned())
}

fn draw(frame: &mut Frame, app: &App) {
    let mut body = frame.area();
    if let Some(banner) = &app.banner {
        let [top, rest] =
            Layout::vertical([Constraint::Length(4), Constraint::Min(6)]).areas(frame.area());
        let notice = Paragraph::new(banner.as_str())
            .wrap(Wrap { trim: true })
            .style(Style::default().add_modifier(Modifier::BOLD))
            .block(Block::bordered().title(" IMPORTANT "));
        frame.render_widget(notice, top);
        body = rest;
    }
    let [left, right] =
        Layout::horizontal([Constraint::Length(30), Constraint::Min(20)]).areas(body);
    let [messages_area, input_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(right);

    let items: Vec<ListItem> = app
        .chats
        .iter()
        .map(|c| {
            let suffix = match c.state {
                ChatState::Active => "",
                ChatState::Left => " (left)",
                ChatState::Removed => " (removed)",
            };
            ListItem::new(format!("{}{suffix}", one_line(&c.name)))
        })
        .collect();
    let mut state =
        ListState::default().with_selected((!app.chats.is_empty()).then_some(app.selected));
    let list = List::new(items)
        .block(Block::bordered().title(" Chats "))
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(list, left, &mut state);

    let title = app
        .chats
        .get(app.selected)
        .map(|c| format!(" {} ", one_line(&c.name)))
        .unwrap_or_else(|| " No chats ".into());
    // Show the latest messages that fit, newest at the bottom.
    let height = messages_area.height.saturating_sub(2) as usize;
    let width = messages_area.width.saturating_sub(2).max(1) as usize;
    let mut rows = 0;
    let mut shown = Vec::new();
    'fill: for m in app.messages.iter().rev() {
        for line in message_lines(m).into_iter().rev() {
            rows += line.width().div_ceil(width).max(1);
            if rows > height && !shown.is_empty() {
                break 'fill;
            }
            shown.push(line);
        }
    }
    shown.reverse();
    let messages = Paragraph::new(shown).wrap(Wrap { trim: false }).block(
        Block::bordered()
            .title(title)
            .title_bottom(format!(" {} ", app.status)),
    );
    frame.render_widget(messages, messages_area);

    let input =
        Paragraph::new(one_line(&app.input).into_owned())
            .block(Block::bordered().title(
                " Message — Enter sends, Alt+Enter new line, Tab switches chat, Esc quits ",
            ));
    frame.render_widget(input, input_area);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(author: Author, text: &str) -> MessageRecord {
        MessageRecord {
            message_id: uuid::Uuid::new_v4(),
            group_id: b"n".to_vec(),
            author,
            text: text.into(),
            sent_at: 0,
            received_at: 0,
            delivery: Delivery::Sent,
        }
    }

    #[test]
    fn warnings_about_the_account_itself_take_the_banner() {
        let notices = vec![
            notice(Author::System, "⚠ YOUR ACCOUNT WAS RESET: first"),
            notice(Author::System, "Redoubt is leaving FR"),
            notice(Author::System, "⚠ KEY DIRECTORY: newest"),
            notice(Author::System, "something later"),
        ];
        assert_eq!(
            security_alert(&notices).as_deref(),
            Some("⚠ KEY DIRECTORY: newest")
        );
        assert_eq!(security_alert(&notices[1..2]), None);
        // Only this device's own warnings: a member's text never passes.
        let forged = vec![notice(
            Author::Member {
                account: redoubt_proto::AccountId::random(),
                device: redoubt_proto::DeviceId::random(),
                phone: "+33612345678".into(),
                me: false,
            },
            "⚠ KEY DIRECTORY: forged",
        )];
        assert_eq!(security_alert(&forged), None);
    }
}
