#!/usr/bin/env python3
"""The longest functions in the given source folders: lines from `fn` to its closing brace.

Usage: scripts/longest-functions.py src crates/tracker/src   (N=30 for more rows)
A rough count (strings and // comments are skipped when matching braces), used to
compare the shape of the code before and after a change."""
import re,sys,os
res=[]
for root in sys.argv[1:]:
  for dp,dn,fn in os.walk(root):
    for f in fn:
      if not f.endswith('.rs'): continue
      p=os.path.join(dp,f); lines=open(p).read().split('\n')
      i=0
      while i<len(lines):
        m=re.match(r'\s*(pub(\([^)]*\))?\s+)?(async\s+)?fn\s+(\w+)',lines[i])
        if m:
          depth=0; started=False; j=i
          while j<len(lines):
            l=re.sub(r'"([^"\\]|\\.)*"','',lines[j]); l=re.sub(r'//.*','',l)
            if not started and ';' in l and '{' not in l: break
            for c in l:
              if c=='{': depth+=1; started=True
              elif c=='}': depth-=1
            if started and depth==0: break
            j+=1
          if started: res.append((j-i+1,p,m.group(4),i+1))
        i+=1
res.sort(reverse=True)
for r in res[:int(os.environ.get('N','15'))]: print(*r)
