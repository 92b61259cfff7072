"""The semantic visual tokenizer (ARM's first pillar): frozen backbone -> projection -> FSQ ->
up-projection -> heads for L_pix, L_feat, L_sig and L_cap."""
