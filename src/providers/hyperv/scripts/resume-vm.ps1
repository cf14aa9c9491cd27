# Resume a paused VM (Resume-VM). Does nothing in any other state.
# Args (ArgsJson): { VmId: guid }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vm = Get-VmbVm $a
    $before = [string]$vm.State
    $acted = $false
    if ($before -eq 'Paused') {
        Hyper-V\Resume-VM -VM $vm
        $acted = $true
    }
    $out = [ordered]@{ StateBefore = $before; Acted = $acted; State = Get-VmbVmState (Hyper-V\Get-VM -Id $vm.Id) }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
