// peatio-ws live demo: plain WebSocket clients, no build step, no dependencies.
// The private stream, legacy dialect (SPEC section 3, docs/protocol.md):
//   server: {"challenge":"..."}            on open
//   client: {"jwt":"Bearer <JWT>"}         to authenticate (again after every reconnect)
//   server: {"success":{"message":"Authenticated."}} or {"error":{"message":"..."}}
//   server: {"order":{...}}, {"trade":{...}}, ... the member's own events
//   client: ping (text) -> server: pong (text). Protocol-level pings are answered by the browser.
//   close 1012 "Events may have been lost: reconnect and resync" (SPEC section 8): the order list may be
//   wrong. The page says so, reconnects as usual and, once authenticated again, replaces its orders with
//   the exchange's list: GET /api/v2/peatio/market/orders (Authorization: Bearer <JWT>), which the demo
//   runner answers from the orders it published (a stand-in for Peatio's REST API).
// The market panel, ranger dialect (SPEC section 7), a second WebSocket, anonymous:
//   <ranger>/public/?stream=<m>.ob-inc&stream=<m>.trades
//   server: {"<m>.ob-snap":{"asks":[[p,v],...],"bids":[...],"sequence":N}}, then the stored
//           {"<m>.ob-inc":{"asks"|"bids":[p,v],"sequence":N+1}}, ..., then
//           {"success":{"message":"subscribed","streams":[...]}}; later more ob-inc (volume "0"
//           deletes the level), ob-snap, and {"<m>.trades":{"trades":[{tid,price,amount,taker_type,date}]}}.
//   An ob-inc applies only if its sequence is the previous one + 1 (as baseapp checks); otherwise the
//   book waits for the next ob-snap and ignores increments until then.
'use strict';

(function () {
  const MAX_ROWS = 50;          // rows kept per table
  const BOOK_LEVELS = 8;        // order-book levels shown per side
  const MARKET_TRADES = 15;     // public trades shown
  const MAX_LOG = 200;          // messages kept in the log
  const BACKOFF_BASE_MS = 500;  // first reconnect delay (before jitter)
  const BACKOFF_CAP_MS = 30000; // longest reconnect delay
  const CLOSE_MEANINGS = {
    1000: 'normal closure', 1001: 'server going away', 1006: 'connection lost',
    1009: 'message too big', 1011: 'server error', 1012: 'events may have been lost',
    4001: 'token expired', 4002: 'authentication timeout', 4003: 'session revoked',
    4008: 'client too slow', 4029: 'too many authentication attempts',
  };
  // Reconnecting with the same token cannot help after these: ask the user instead.
  const NO_RECONNECT = new Set([4001, 4002, 4003, 4029, 1009]);

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'), wsUrl: $('ws-url'), connect: $('connect'), disconnect: $('disconnect'),
    ping: $('ping'), challenge: $('challenge'), reconnects: $('reconnects'), uid: $('uid'),
    members: $('members'), generate: $('generate'), devNote: $('dev-note'), token: $('token'),
    log: $('log'), orders: $('orders').tBodies[0], trades: $('trades').tBodies[0],
    ordersCount: $('orders-count'), tradesCount: $('trades-count'),
    ordersEmpty: $('orders-empty'), tradesEmpty: $('trades-empty'),
    marketName: $('market-name'), marketStatus: $('market-status'), marketUrl: $('market-url'),
    bookSequence: $('book-sequence'), bookCounts: $('book-counts'), book: $('book'),
    asks: $('book-asks'), bids: $('book-bids'), spread: $('spread'),
    marketTrades: $('market-trades').tBodies[0], marketTradesCount: $('market-trades-count'),
    marketTradesEmpty: $('market-trades-empty'),
    resync: $('resync'), resyncText: $('resync-text'), resyncNow: $('resync-now'), resyncDismiss: $('resync-dismiss'),
  };

  const s = {
    ws: null,            // the current WebSocket
    wanted: false,       // the user wants to be connected (reconnect when it drops)
    token: '',           // the last token sent: sent again after every reconnect
    authenticated: false,
    attempt: 0,          // reconnect attempts since the last success
    timer: null,         // pending reconnect
    reconnects: 0,
    pingAt: 0,
    counts: { order: 0, trade: 0 },
    orderRows: new Map(), // order id -> <tr>
    ordersUrl: 'api/v2/peatio/market/orders', // the exchange's REST API (the demo runner's stand-in)
    resyncDue: false,    // closed with 1012: reload the orders once authenticated again
    resyncRun: 0,        // the latest reload (an older one's answer is ignored)
    held: null,          // order events that arrive during a reload: applied after it, in order
  };

  // -- status and log --------------------------------------------------------------

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
    const open = s.ws !== null && s.ws.readyState === WebSocket.OPEN;
    el.connect.disabled = s.ws !== null;
    el.disconnect.disabled = !s.wanted && !s.ws;
    el.ping.disabled = !open;
  }

  function log(direction, text, kind) {
    const item = document.createElement('li');
    item.className = kind || '';
    const time = document.createElement('time');
    time.textContent = new Date().toLocaleTimeString();
    const dir = document.createElement('span');
    dir.textContent = direction;
    dir.setAttribute('aria-hidden', 'true');
    const body = document.createElement('code');
    const spoken = document.createElement('span');
    spoken.className = 'sr-only';
    spoken.textContent = ({ '←': 'received: ', '→': 'sent: ' })[direction] || 'note: ';
    body.append(spoken, text);
    item.append(time, dir, body);
    el.log.prepend(item);
    while (el.log.children.length > MAX_LOG) el.log.lastElementChild.remove();
  }

  // The uid and expiry a token claims (display only: the server is what verifies it).
  function claimsOf(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    } catch (e) {
      return {};
    }
  }

  // -- the connection ----------------------------------------------------------------

  function connect() {
    s.wanted = true;
    s.attempt = 0;
    clearTimeout(s.timer);
    s.timer = null;
    if (s.ws) return;
    open();
  }

  function open() {
    s.timer = null;
    const url = el.wsUrl.value.trim();
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      s.wanted = false;
      log('•', 'Cannot connect to ' + JSON.stringify(url) + ': ' + e.message, 'error');
      setStatus('disconnected', 'Disconnected: invalid WebSocket URL');
      return;
    }
    s.ws = ws;
    s.authenticated = false;
    setStatus('connecting', 'Connecting to ' + url + ' …');
    log('•', 'connecting to ' + url);
    ws.onopen = () => {
      setStatus('connected', s.token ? 'Connected, authenticating…' : 'Connected: waiting for a token');
      if (!s.token) s.attempt = 0;
    };
    ws.onmessage = (event) => receive(ws, event);
    ws.onerror = () => log('•', 'WebSocket error (the close code follows)', 'error');
    ws.onclose = (event) => closed(ws, event);
  }

  function receive(ws, event) {
    if (ws !== s.ws) return;
    if (typeof event.data !== 'string') {
      log('←', '(binary message, ' + (event.data.size || event.data.byteLength) + ' bytes)');
      return;
    }
    if (event.data === 'pong') {
      const ms = s.pingAt ? Math.round(performance.now() - s.pingAt) : null;
      log('←', 'pong' + (ms !== null ? '  (' + ms + ' ms)' : ''), 'pong');
      s.pingAt = 0;
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (e) {
      log('←', event.data);
      return;
    }
    const type = message && typeof message === 'object' ? Object.keys(message)[0] : undefined;
    const payload = type !== undefined ? message[type] : undefined;
    log('←', event.data, type === 'error' ? 'error' : type === 'success' ? 'success' : '');
    if (type === 'challenge') {
      el.challenge.textContent = String(payload);
      if (s.token) sendToken(s.token);
    } else if (type === 'success') {
      s.authenticated = true;
      s.attempt = 0;
      const claims = claimsOf(s.token);
      const until = claims.exp ? ' until ' + new Date(claims.exp * 1000).toLocaleTimeString() : '';
      setStatus('authenticated', 'Authenticated as ' + (claims.uid || 'member') + until);
      // Events flow again: now the list from the REST API, with what arrives meanwhile on top.
      if (s.resyncDue) resync();
    } else if (type === 'error') {
      s.authenticated = false;
      const text = payload && payload.message ? payload.message : 'error';
      setStatus('connected', 'Connected, not authenticated: ' + text);
    } else if (type === 'order') {
      if (s.held) s.held.push(payload);
      else showOrder(payload, 'event');
    } else if (type === 'trade') {
      showTrade(payload);
    }
  }

  function closed(ws, event) {
    if (ws !== s.ws) return;
    s.ws = null;
    s.authenticated = false;
    const meaning = CLOSE_MEANINGS[event.code] || 'unknown';
    log('•', 'closed: code ' + event.code + ' (' + meaning + ')' + (event.reason ? ' “' + event.reason + '”' : ''),
      event.code === 1000 ? '' : 'error');
    if (event.code === 1012) {
      s.resyncDue = true;
      notice('lost', 'Events may have been lost: the server closed the connection with 1012. Reconnecting, then ' +
        'reloading your orders from the REST API; until then the orders below may be wrong.');
    }
    if (!s.wanted) {
      setStatus('disconnected', 'Disconnected');
    } else if (NO_RECONNECT.has(event.code)) {
      s.wanted = false;
      const advice = event.code === 4002 ? 'Authenticate to connect again.'
        : event.code === 1009 ? 'Check the token, then Authenticate.' : 'Get a new token, then Authenticate.';
      setStatus('disconnected', 'Disconnected: ' + meaning + '. ' + advice);
    } else {
      scheduleReconnect(event.code + ' ' + meaning);
    }
  }

  // Exponential backoff with jitter: half the delay fixed, half random, so that
  // many clients dropped at once by a restart do not all come back together.
  function scheduleReconnect(why) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** s.attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    s.attempt += 1;
    s.reconnects += 1;
    el.reconnects.textContent = String(s.reconnects);
    setStatus('reconnecting', 'Reconnecting in ' + (delay / 1000).toFixed(1) + ' s (attempt ' + s.attempt +
      ', closed with ' + why + ')');
    s.timer = setTimeout(open, delay);
  }

  function disconnect() {
    s.wanted = false;
    clearTimeout(s.timer);
    s.timer = null;
    if (s.ws) {
      s.ws.close(1000, 'bye');
      setStatus('closing', 'Closing…');
    } else {
      setStatus('disconnected', 'Disconnected');
    }
  }

  function send(text, shown) {
    s.ws.send(text);
    log('→', shown || text);
  }

  function sendToken(token) {
    const message = JSON.stringify({ jwt: 'Bearer ' + token });
    const short = token.length > 24 ? token.slice(0, 16) + '…' + token.slice(-6) : token;
    setStatus('authenticating', 'Authenticating…');
    send(message, JSON.stringify({ jwt: 'Bearer ' + short }));
  }

  function authenticate() {
    const token = el.token.value.trim().replace(/^Bearer\s+/i, '');
    if (!token) {
      log('•', 'Paste a token or generate a development token first.', 'error');
      el.token.focus();
      return;
    }
    s.token = token;
    if (s.ws && s.ws.readyState === WebSocket.OPEN) {
      sendToken(token);
    } else {
      connect(); // the token goes out when the challenge arrives
    }
  }

  function ping() {
    if (!s.ws || s.ws.readyState !== WebSocket.OPEN) return;
    s.pingAt = performance.now();
    send('ping');
  }

  // -- resync after 1012 --------------------------------------------------------------------

  function notice(state, text) {
    el.resync.dataset.state = state;
    el.resync.hidden = state === 'idle';
    el.resyncText.textContent = text;
    el.resyncNow.hidden = state !== 'failed';
    el.resyncDismiss.hidden = state !== 'resynced' && state !== 'failed';
  }

  // The exchange's list replaces the page's: events that may have been lost are in it. Order events
  // that arrive while it loads wait, and are applied after it in order, so nothing newer is undone.
  async function resync() {
    s.resyncDue = false;
    const run = ++s.resyncRun;
    s.held = [];
    const url = new URL(s.ordersUrl, location.href);
    url.searchParams.set('limit', String(MAX_ROWS));
    notice('resyncing', 'Events may have been lost (close 1012). Reconnected; reloading your orders from ' +
      url.pathname + ' …');
    log('•', 'resync: GET ' + url.pathname + url.search);
    let orders;
    try {
      const response = await fetch(url, { headers: { Authorization: 'Bearer ' + s.token }, cache: 'no-store' });
      const body = await response.json().catch(() => null);
      if (!response.ok || !Array.isArray(body)) {
        throw new Error((body && Array.isArray(body.errors) ? body.errors.join(', ') + ', ' : '') +
          'HTTP ' + response.status);
      }
      orders = body;
    } catch (e) {
      if (run !== s.resyncRun) return;
      releaseHeld();
      notice('failed', 'Events may have been lost (close 1012) and the orders could not be reloaded (' + e.message +
        '): the list below may be wrong.');
      log('•', 'resync failed: ' + e.message, 'error');
      return;
    }
    if (run !== s.resyncRun) return;
    replaceOrders(orders);
    const applied = releaseHeld();
    notice('resynced', 'Events may have been lost (close 1012): reconnected and reloaded ' + orders.length +
      (orders.length === 1 ? ' order' : ' orders') + ' from the REST API at ' + new Date().toLocaleTimeString() +
      (applied ? ', then applied ' + applied + (applied === 1 ? ' event' : ' events') + ' that came meanwhile' : '') +
      '.');
    log('•', 'resync: ' + orders.length + ' orders from ' + url.pathname + ' replace the list', 'success');
  }

  function releaseHeld() {
    const held = s.held || [];
    s.held = null;
    for (const o of held) showOrder(o, 'event');
    return held.length;
  }

  function replaceOrders(orders) {
    el.orders.replaceChildren();
    s.orderRows.clear();
    for (const o of [...orders].reverse()) showOrder(o, 'rest'); // newest first: the newest goes on top last
    el.ordersEmpty.hidden = el.orders.rows.length > 0;
    el.ordersEmpty.textContent = 'No orders.';
  }

  // -- the development token -----------------------------------------------------------

  async function generateToken() {
    const uid = el.uid.value.trim();
    if (!el.uid.checkValidity() || !uid) {
      log('•', 'A uid is 1 to 64 letters, digits, "_" or "-".', 'error');
      el.uid.focus();
      return false;
    }
    el.generate.disabled = true;
    try {
      const response = await fetch('dev/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ uid }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok || !body.token) {
        throw new Error(body.error || 'HTTP ' + response.status);
      }
      el.token.value = body.token;
      log('•', 'development token for ' + uid + ' (valid until ' +
        new Date(body.exp * 1000).toLocaleTimeString() + ')');
      return true;
    } catch (e) {
      log('•', 'No development token: ' + e.message +
        '. The endpoint exists only under the demo runner (make demo); paste a token instead.', 'error');
      return false;
    } finally {
      el.generate.disabled = false;
    }
  }

  // -- events ------------------------------------------------------------------------------

  function cell(row, value, className) {
    const td = document.createElement('td');
    td.textContent = value === null || value === undefined || value === '' ? '—' : String(value);
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function timeCell(row, iso) {
    const td = document.createElement('td');
    const date = iso ? new Date(iso) : null;
    if (date && !isNaN(date)) {
      const time = document.createElement('time');
      time.dateTime = iso;
      time.title = iso;
      time.textContent = date.toLocaleTimeString();
      td.append(time);
    } else {
      td.textContent = iso ? String(iso) : '—';
    }
    row.append(td);
  }

  function sideCell(row, side) {
    cell(row, side, side === 'buy' ? 'buy' : side === 'sell' ? 'sell' : '');
  }

  function flash(row) {
    row.classList.remove('fresh');
    void row.offsetWidth; // restart the animation
    row.classList.add('fresh');
  }

  function trim(tbody, onRemove) {
    while (tbody.rows.length > MAX_ROWS) {
      const last = tbody.rows[tbody.rows.length - 1];
      if (onRemove) onRemove(last);
      last.remove();
    }
  }

  // One row per order, showing its latest state; an update moves it to the top. source: 'event'
  // (from the stream) or 'rest' (from the REST API, after a 1012).
  function showOrder(o, source) {
    if (!o || typeof o !== 'object') return;
    if (source === 'event') {
      s.counts.order += 1;
      el.ordersCount.textContent = s.counts.order + (s.counts.order === 1 ? ' event' : ' events');
    }
    el.ordersEmpty.hidden = true;
    const id = String(o.id);
    const row = document.createElement('tr');
    row.dataset.id = id;
    row.dataset.state = String(o.state);
    row.dataset.source = source;
    if (source === 'rest') row.title = 'reloaded from the REST API';
    timeCell(row, o.created_at);
    cell(row, o.id, 'id');
    cell(row, o.market !== undefined ? o.market : o.market_id);
    sideCell(row, o.side);
    cell(row, o.ord_type);
    cell(row, o.price, 'num');
    cell(row, o.avg_price, 'num');
    cell(row, o.origin_volume, 'num');
    cell(row, o.executed_volume, 'num');
    cell(row, o.remaining_volume, 'num');
    cell(row, o.trades_count, 'num');
    const state = cell(row, o.state, 'state');
    state.dataset.state = String(o.state);
    const old = s.orderRows.get(id);
    if (old) old.remove();
    s.orderRows.set(id, row);
    el.orders.prepend(row);
    if (source === 'event') flash(row);
    trim(el.orders, (r) => s.orderRows.delete(r.dataset.id));
  }

  function showTrade(t) {
    if (!t || typeof t !== 'object') return;
    s.counts.trade += 1;
    el.tradesCount.textContent = s.counts.trade + (s.counts.trade === 1 ? ' event' : ' events');
    el.tradesEmpty.hidden = true;
    const row = document.createElement('tr');
    row.dataset.id = String(t.id);
    timeCell(row, t.created_at);
    cell(row, t.id, 'id');
    const orderId = t.order_id !== undefined ? t.order_id
      : t.side === 'sell' && t.ask ? t.ask.id : t.bid ? t.bid.id : t.ask ? t.ask.id : undefined;
    cell(row, orderId, 'id');
    cell(row, t.market !== undefined ? t.market : t.market_id);
    sideCell(row, t.side);
    cell(row, t.price, 'num');
    cell(row, t.amount !== undefined ? t.amount : t.volume, 'num');
    cell(row, t.total !== undefined ? t.total : t.funds, 'num');
    el.trades.prepend(row);
    flash(row);
    trim(el.trades);
  }


  // -- the market panel: public streams on the ranger dialect ------------------------------------

  const m = {
    market: 'btcusd',
    url: '',             // the ranger public URL, streams included
    ws: null,
    attempt: 0,
    timer: null,
    asks: new Map(),     // Number(price) -> [price text, volume text]
    bids: new Map(),
    sequence: null,      // the sequence of the last snapshot or increment applied
    primed: false,       // a snapshot and every increment since: increments apply
    why: '',             // why the book waits
    counts: { snapshots: 0, applied: 0, ignored: 0, trades: 0 },
    digits: { price: 0, volume: 0 }, // decimal places shown, the most the book has had
  };

  function setMarketStatus(state, text) {
    el.marketStatus.dataset.state = state;
    el.marketStatus.textContent = text;
  }

  function marketConnect() {
    m.timer = null;
    let ws;
    try {
      ws = new WebSocket(m.url);
    } catch (e) {
      log('•', 'market: cannot connect to ' + JSON.stringify(m.url) + ': ' + e.message, 'error');
      setMarketStatus('disconnected', 'Disconnected: invalid URL');
      return;
    }
    m.ws = ws;
    setMarketStatus('connecting', 'Connecting…');
    ws.onopen = () => {
      log('•', 'market: connected to ' + m.url);
      bookWaits('waiting for the replay');
    };
    ws.onmessage = (event) => marketReceive(ws, event);
    ws.onclose = (event) => {
      if (ws !== m.ws) return;
      m.ws = null;
      m.primed = false;
      showBookState();
      const meaning = CLOSE_MEANINGS[event.code] || 'unknown';
      log('•', 'market: closed: code ' + event.code + ' (' + meaning + ')', event.code === 1000 ? '' : 'error');
      const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** m.attempt);
      const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
      m.attempt += 1;
      setMarketStatus('reconnecting', 'Reconnecting in ' + (delay / 1000).toFixed(1) + ' s (closed with ' +
        event.code + ' ' + meaning + ')');
      m.timer = setTimeout(marketConnect, delay);
    };
  }

  function marketReceive(ws, event) {
    if (ws !== m.ws || typeof event.data !== 'string' || event.data === 'pong') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (e) {
      log('←', 'market: ' + event.data, 'error');
      return;
    }
    const type = message && typeof message === 'object' ? Object.keys(message)[0] : undefined;
    const payload = type !== undefined ? message[type] : undefined;
    if (type === m.market + '.ob-snap') {
      applySnapshot(payload);
    } else if (type === m.market + '.ob-inc') {
      applyIncrement(payload);
    } else if (type === m.market + '.trades') {
      showMarketTrades(payload);
    } else if (type === 'success' || type === 'error') {
      // Control replies only: the market's own frames would flood the log.
      log('←', 'market: ' + event.data, type);
      if (type === 'success') {
        m.attempt = 0;
        if (!m.primed) bookWaits('waiting for snapshot');
      }
    }
  }

  function isSequence(value) {
    return typeof value === 'number' && Number.isInteger(value);
  }

  function levelsOf(value) {
    // A single [price, volume] (Peatio's increments) or a list of them (snapshots; some producers' increments).
    if (!Array.isArray(value)) return [];
    if (value.length === 2 && !Array.isArray(value[0])) return [value];
    return value.filter((level) => Array.isArray(level) && level.length >= 2);
  }

  function setLevel(side, level) {
    const price = Number(level[0]);
    if (!Number.isFinite(price)) return;
    if (Number(level[1]) === 0) side.delete(price);
    else side.set(price, [String(level[0]), String(level[1])]);
  }

  function applySnapshot(p) {
    if (!p || typeof p !== 'object' || !isSequence(p.sequence)) {
      m.counts.ignored += 1;
      bookWaits('a snapshot without a sequence: waiting for the next one');
      return;
    }
    m.asks.clear();
    m.bids.clear();
    for (const level of levelsOf(p.asks)) setLevel(m.asks, level);
    for (const level of levelsOf(p.bids)) setLevel(m.bids, level);
    m.sequence = p.sequence;
    m.primed = true;
    m.why = '';
    m.counts.snapshots += 1;
    setMarketStatus('live', 'Live');
    renderBook();
  }

  function applyIncrement(p) {
    const sequence = p && typeof p === 'object' ? p.sequence : undefined;
    if (!m.primed) {
      m.counts.ignored += 1;
      showBookState();
      return;
    }
    if (!isSequence(sequence) || sequence !== m.sequence + 1) {
      m.counts.ignored += 1;
      bookWaits('sequence gap: expected ' + (m.sequence + 1) + ', got ' + JSON.stringify(sequence) +
        '; waiting for snapshot');
      return;
    }
    for (const level of levelsOf(p.asks)) setLevel(m.asks, level);
    for (const level of levelsOf(p.bids)) setLevel(m.bids, level);
    m.sequence = sequence;
    m.counts.applied += 1;
    renderBook();
  }

  // Until the next snapshot: increments are ignored, the book shown is stale.
  function bookWaits(why) {
    m.primed = false;
    m.why = why;
    setMarketStatus('waiting', why.charAt(0).toUpperCase() + why.slice(1));
    showBookState();
  }

  function showBookState() {
    const state = m.primed ? 'primed' : 'waiting';
    el.book.dataset.state = state;
    el.bookSequence.dataset.state = state;
    el.bookSequence.textContent = (m.sequence === null ? '—' : String(m.sequence)) +
      (m.primed ? '' : '  (waiting for snapshot)');
    const c = m.counts;
    el.bookCounts.textContent = c.snapshots + (c.snapshots === 1 ? ' snapshot, ' : ' snapshots, ') +
      c.applied + (c.applied === 1 ? ' increment' : ' increments') + ' applied, ' + c.ignored + ' ignored';
  }

  function decimals(text) {
    const dot = text.indexOf('.');
    return dot < 0 ? 0 : text.length - dot - 1;
  }

  // Peatio's decimals come trimmed ("64296.3"): shown with as many places as the longest, so they line up.
  function places(texts) {
    return texts.reduce((most, text) => Math.max(most, decimals(text)), 0);
  }

  function padded(text, digits) {
    const value = Number(text);
    return Number.isFinite(value) && decimals(text) < digits ? value.toFixed(digits) : text;
  }

  function renderSide(tbody, levels, className, priceDigits, volumeDigits) {
    // Cumulative depth from the best price outwards, as a bar behind the volume.
    let total = 0;
    const rows = levels.map(([price, volume]) => {
      total += Number(volume);
      return { price, volume, total };
    });
    const deepest = total || 1;
    if (className === 'ask') rows.reverse(); // asks above the spread, the best one lowest
    tbody.replaceChildren(...rows.map(({ price, volume, total: depth }) => {
      const row = document.createElement('tr');
      row.className = className;
      row.dataset.price = price;
      row.dataset.volume = volume;
      cell(row, className, 'side');
      cell(row, padded(price, priceDigits), 'num price');
      const v = cell(row, padded(volume, volumeDigits), 'num depth');
      v.style.setProperty('--depth', (100 * depth / deepest).toFixed(1) + '%');
      return row;
    }));
  }

  function renderBook() {
    const asks = [...m.asks.keys()].sort((a, b) => a - b).slice(0, BOOK_LEVELS).map((k) => m.asks.get(k));
    const bids = [...m.bids.keys()].sort((a, b) => b - a).slice(0, BOOK_LEVELS).map((k) => m.bids.get(k));
    const shown = asks.concat(bids);
    const priceDigits = Math.max(m.digits.price, places(shown.map((level) => level[0])));
    const volumeDigits = Math.max(m.digits.volume, places(shown.map((level) => level[1])));
    m.digits = { price: priceDigits, volume: volumeDigits };
    renderSide(el.asks, asks, 'ask', priceDigits, volumeDigits);
    renderSide(el.bids, bids, 'bid', priceDigits, volumeDigits);
    if (asks.length && bids.length) {
      el.spread.textContent = 'spread ' + (Number(asks[0][0]) - Number(bids[0][0])).toFixed(priceDigits) +
        '  ·  ' + m.asks.size + ' asks, ' + m.bids.size + ' bids';
    } else {
      el.spread.textContent = '—';
    }
    showBookState();
  }

  function showMarketTrades(p) {
    const trades = p && Array.isArray(p.trades) ? p.trades : [];
    for (const t of [...trades].reverse()) {
      if (!t || typeof t !== 'object') continue;
      m.counts.trades += 1;
      const row = document.createElement('tr');
      row.dataset.id = String(t.tid);
      const date = typeof t.date === 'number' ? new Date(t.date * 1000) : null;
      timeCell(row, date && !isNaN(date) ? date.toISOString() : t.date);
      sideCell(row, t.taker_type);
      cell(row, padded(String(t.price), m.digits.price), 'num');
      cell(row, padded(String(t.amount), m.digits.volume), 'num');
      el.marketTrades.prepend(row);
      flash(row);
    }
    while (el.marketTrades.rows.length > MARKET_TRADES) el.marketTrades.rows[el.marketTrades.rows.length - 1].remove();
    el.marketTradesCount.textContent = m.counts.trades + (m.counts.trades === 1 ? ' trade' : ' trades');
    el.marketTradesEmpty.hidden = m.counts.trades > 0;
  }

  function startMarket(url, market) {
    m.market = market;
    const streams = [market + '.ob-inc', market + '.trades'].sort(); // baseapp sorts them too
    el.marketName.textContent = market;
    let target;
    try {
      target = new URL(url);
    } catch (e) {
      log('•', 'market: not a WebSocket URL: ' + JSON.stringify(url), 'error');
      setMarketStatus('disconnected', 'Disconnected: invalid URL');
      return;
    }
    for (const stream of streams) target.searchParams.append('stream', stream);
    m.url = target.href;
    el.marketUrl.textContent = m.url;
    showBookState();
    marketConnect();
  }

  // -- start-up --------------------------------------------------------------------------------

  async function loadConfig() {
    try {
      const response = await fetch('config.json', { cache: 'no-store' });
      if (response.ok) return await response.json();
    } catch (e) {
      // Served by something else than the demo runner: defaults below.
    }
    return null;
  }

  async function start() {
    const params = new URLSearchParams(location.search);
    const config = await loadConfig();
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const host = location.hostname || '127.0.0.1';
    const port = (config && config.wsPort) || 8080;
    el.wsUrl.value = params.get('ws') || (config && config.wsUrl) ||
      scheme + '//' + (host.includes(':') ? '[' + host + ']' : host) + ':' + port + '/';
    const members = (config && config.members) || ['ID1A2B3C4D5E', 'IDF6E5D4C3B2'];
    for (const uid of members) {
      const option = document.createElement('option');
      option.value = uid;
      el.members.append(option);
    }
    if (params.get('uid')) el.uid.value = params.get('uid');
    else if (members.length) el.uid.value = members[0];
    if (!config || !config.devTokens) {
      el.generate.disabled = true;
      el.devNote.textContent = 'No development token endpoint here (it comes with make demo): paste a token.';
    }

    $('connect-form').addEventListener('submit', (e) => { e.preventDefault(); connect(); });
    $('auth-form').addEventListener('submit', (e) => { e.preventDefault(); authenticate(); });
    el.disconnect.addEventListener('click', disconnect);
    el.ping.addEventListener('click', ping);
    el.generate.addEventListener('click', generateToken);
    el.resyncNow.addEventListener('click', () => { if (s.token) resync(); });
    el.resyncDismiss.addEventListener('click', () => notice('idle', ''));
    if (config && config.ordersUrl) s.ordersUrl = config.ordersUrl;
    setStatus('disconnected', 'Disconnected');
    // The market panel starts at once: public streams need no token.
    const market = params.get('market') || (config && config.market) || 'btcusd';
    let rangerUrl = params.get('ranger') || (config && config.rangerUrl);
    if (!rangerUrl) {
      try {
        rangerUrl = new URL((config && config.rangerPath) || '/api/v2/ranger/public/', el.wsUrl.value).href;
      } catch (e) {
        rangerUrl = '';
      }
    }
    if (rangerUrl) startMarket(rangerUrl, market);
    document.body.dataset.ready = 'true';

    // ?uid=ID...&autoconnect=1: generate a development token, connect and authenticate.
    if (params.get('autoconnect') === '1' && config && config.devTokens) {
      if (await generateToken()) authenticate();
    }
  }

  start();
})();
