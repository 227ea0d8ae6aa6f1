// ComposLoRA's LoRA categories, which CMLoRA's code groups LoRAs by (`check_anime_lora`: every
// category but background leads, backgrounds come last), and a first guess at one from a file's name
// and training tags when nobody said (the artist can change it in the studio).
export const LORA_CATEGORIES = ['character', 'clothing', 'style', 'background', 'object'] as const;
export type LoraCategory = (typeof LORA_CATEGORIES)[number];

export const isLoraCategory = (s: unknown): s is LoraCategory => typeof s === 'string' && (LORA_CATEGORIES as readonly string[]).includes(s);

/** A first guess at a LoRA's category from its file name and training tags; the artist can change it. */
export function guessCategory(name: string, tags: string[] = []): LoraCategory {
  const text = `${name} ${tags.slice(0, 20).join(' ')}`.toLowerCase();
  if (/style|painting|illustration|watercolou?r|sketch|anime style|art style/.test(text)) return 'style';
  if (/background|scenery|landscape|city|forest|room|interior|street/.test(text)) return 'background';
  if (/dress|outfit|clothes|clothing|uniform|armor|armour|shirt|jacket|costume/.test(text)) return 'clothing';
  if (/\b(car|sword|cup|bottle|object|item|weapon|vehicle|building)\b/.test(text)) return 'object';
  return 'character';
}

