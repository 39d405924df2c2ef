/**
 * Topic names and the per-device topic ACL.
 *
 * A device owns the subtree hp/v1/<deviceId>/. It publishes to exactly hp/v1/<deviceId>/up and
 * subscribes only to filters that stay inside hp/v1/<deviceId>/down (the filter may use + and #
 * below "down"). Everything else, $SYS included, is refused.
 */
export const TOPIC_ROOT = "hp/v1";

export function upTopic(deviceId: string): string {
  return `${TOPIC_ROOT}/${deviceId}/up`;
}

export function downTopic(deviceId: string): string {
  return `${TOPIC_ROOT}/${deviceId}/down`;
}

/** The device id an up topic belongs to, or null when the topic is not an up topic. */
export function deviceOfUpTopic(topic: string): string | null {
  const levels = topic.split("/");
  if (levels.length !== 4 || levels[0] !== "hp" || levels[1] !== "v1" || levels[3] !== "up") return null;
  return levels[2] ?? null;
}

export function mayPublish(deviceId: string, topic: string): boolean {
  return topic === upTopic(deviceId);
}

export function maySubscribe(deviceId: string, filter: string): boolean {
  const levels = filter.split("/");
  // The first four levels must be literal: no wildcard may widen the filter beyond the own subtree.
  if (levels.length < 4) return false;
  if (levels[0] !== "hp" || levels[1] !== "v1" || levels[2] !== deviceId || levels[3] !== "down") return false;
  // Below "down" any valid filter is fine: "#" only as the last level, "+" alone in a level.
  for (let i = 4; i < levels.length; i++) {
    const level = levels[i]!;
    if (level === "#") return i === levels.length - 1;
    if (level.includes("#") || (level.includes("+") && level !== "+")) return false;
  }
  return true;
}

/** Whether an MQTT topic filter matches a topic name [MQTT-4.7]: `+` one level, `#` the rest (the parent level included). */
export function filterMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
