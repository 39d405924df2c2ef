/**
 * The pairing QR code as an SVG element, built node by node (no markup string is parsed, so
 * nothing in the text can become HTML). One path draws every dark module; the quiet zone is
 * the 4 modules the QR specification asks for.
 */
import qrcode from "qrcode-generator";

const SVG_NS = "http://www.w3.org/2000/svg";
const QUIET_ZONE = 4;

export function qrSvg(text: string, label: string): SVGSVGElement {
  // Level M survives a scuffed or glary screen; type 0 picks the smallest symbol that fits.
  const qr = qrcode(0, "M");
  qr.addData(text, "Byte");
  qr.make();
  const n = qr.getModuleCount();
  const size = n + 2 * QUIET_ZONE;
  let d = "";
  for (let row = 0; row < n; row++) {
    for (let col = 0; col < n; col++) if (qr.isDark(row, col)) d += `M${col + QUIET_ZONE} ${row + QUIET_ZONE}h1v1h-1z`;
  }
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.setAttribute("shape-rendering", "crispEdges");
  const background = document.createElementNS(SVG_NS, "rect");
  background.setAttribute("width", String(size));
  background.setAttribute("height", String(size));
  background.setAttribute("fill", "#fff");
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", d);
  path.setAttribute("fill", "#000");
  svg.append(background, path);
  return svg;
}
